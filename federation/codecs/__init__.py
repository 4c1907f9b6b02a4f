"""Payload codecs for LoRA deltas: the Codec seam, its registry, the shared container, the
bounds on hostile payloads, and error feedback around any codec.

    base.py            Codec (encode_tensor / decode_tensor), CodecError
    registry.py        CODECS: wire name -> Codec class (a new codec: one line there)
    int8_block.py      int8-block-zstd/1 (default, lossy)      raw.py   raw-zstd/1 (lossless)
    fp16.py            fp16-zstd/1          ternary.py  ternary-block-zstd/1 (1.6 bits/value)
    topk.py            topk-zstd/1 (top-k sparsification, delta-coded positions)
    container.py       encode_update / decode_update: names, shapes, msgpack, zstd, checks
    bounded.py         size bounds, bounded zstd and msgpack parsing
    error_feedback.py  ErrorFeedback(codec)
"""
from .base import Codec, CodecError
from .bounded import decompressed_bound, max_payload_bytes
from .container import Delta, decode_update, encode_update, resolve_codec
from .error_feedback import ErrorFeedback
from .int8_block import DEFAULT_BLOCK, INT8_CODEC, Int8BlockCodec
from .raw import RAW_CODEC, RawCodec
from .fp16 import Fp16Codec
from .registry import CODEC_NAMES, CODECS, codec_class, make_codec
from .ternary import TernaryBlockCodec
from .topk import TopKCodec

__all__ = ["CODECS", "CODEC_NAMES", "DEFAULT_BLOCK", "INT8_CODEC", "RAW_CODEC", "Codec",
           "CodecError", "Delta", "ErrorFeedback", "Fp16Codec", "Int8BlockCodec", "RawCodec",
           "TernaryBlockCodec", "TopKCodec", "codec_class", "decode_update",
           "decompressed_bound", "encode_update", "make_codec", "max_payload_bytes",
           "resolve_codec"]
