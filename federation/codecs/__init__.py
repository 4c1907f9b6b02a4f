"""Payload codecs for LoRA deltas: the Codec seam, its registry, the shared container, the
bounds on hostile payloads, and error feedback around any codec.

    base.py            Codec (encode_tensor / decode_tensor), CodecError
    registry.py        CODECS: wire name -> Codec class (a new codec: one line there)
    int8_block.py      int8-block-zstd/1 (default, lossy)      raw.py   raw-zstd/1 (lossless)
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
from .registry import CODECS, codec_class

__all__ = ["CODECS", "DEFAULT_BLOCK", "INT8_CODEC", "RAW_CODEC", "Codec", "CodecError", "Delta",
           "ErrorFeedback", "Int8BlockCodec", "RawCodec", "codec_class", "decode_update",
           "decompressed_bound", "encode_update", "max_payload_bytes", "resolve_codec"]
