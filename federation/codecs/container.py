"""The payload container shared by every codec: encode_update / decode_update.

A delta is `dict[str, np.ndarray]` of float32, e.g. "layers.3.q_proj.lora_A" (r, in) and
"layers.3.q_proj.lora_B" (out, r). A payload is a zstandard frame holding one msgpack map

    {"codec": wire name, "tensors": [[name, shape, *codec fields], ...], *codec header fields}

with names sorted, so equal deltas give equal bytes (the codecs and their fields:
`int8_block.py`, `raw.py`). `encode_update` returns the decoded delta too, produced by the
same code a receiver runs, so sender and receivers agree bit for bit.

Decoding trusts nothing: sizes are bounded before inflating (`bounded.py`), then every field,
key, shape, byte length and value is checked. Failures raise CodecError.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import msgpack
import numpy as np

from .base import Codec, CodecError
from .bounded import bounded_decompress, bounded_unpack, compress, decompressed_bound
from .int8_block import INT8_CODEC
from .registry import CODECS, codec_class

Delta = dict[str, np.ndarray]


def resolve_codec(codec: Codec | str) -> Codec:
    """A Codec instance, or the default instance of the registered wire name `codec`.

    Raises ValueError for an unknown name or anything that is not a Codec.
    """
    if isinstance(codec, Codec):
        return codec
    cls = codec_class(codec)
    if cls is None:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    return cls()


def encode_update(delta: Mapping[str, np.ndarray], *,
                  codec: Codec | str = INT8_CODEC) -> tuple[bytes, Delta]:
    """Encode `delta` (name -> float32 array, any shape) with `codec` (instance or wire name).

    Returns (payload bytes, decoded delta): decoded is bit-identical to what `decode_update`
    gives a receiver. Raises ValueError for an unknown codec, an empty delta, or non-finite
    values (a local bug, not a peer's).
    """
    codec = resolve_codec(codec)
    if not delta:
        raise ValueError("cannot encode an empty delta")
    tensors, decoded = [], {}
    for name in sorted(delta):
        x = np.ascontiguousarray(delta[name], dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"delta[{name!r}] has non-finite values")
        fields, dec = codec.encode_tensor(x.reshape(-1))
        tensors.append([name, list(x.shape), *fields])
        decoded[name] = dec.reshape(x.shape)
    # Key order is part of the bytes: "codec", "tensors", then the codec's header fields.
    container = {"codec": codec.wire_name, "tensors": tensors, **codec.header()}
    return compress(msgpack.packb(container, use_bin_type=True)), decoded


def decode_update(payload: bytes, *, expected_shapes: Mapping[str, tuple[int, ...]],
                  max_bytes: int, codec: str | None = None) -> Delta:
    """Decode a payload into name -> float32 array with exactly `expected_shapes`.

    `max_bytes` caps the compressed payload; `codec`, if given (the manifest's wire name), must
    match the container's. Raises CodecError for: oversize payload, bad zstd, decompressed size
    over `decompressed_bound(expected_shapes)`, malformed msgpack, unknown codec, unknown /
    missing / duplicate / unsorted keys, wrong shapes or byte lengths, codec fields its codec
    refuses, non-finite values.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise CodecError(f"payload is {len(payload)} bytes > limit {max_bytes}")
    bound = decompressed_bound(expected_shapes)
    raw = bounded_decompress(bytes(payload), bound)
    obj = bounded_unpack(raw, bound, n_tensors=len(expected_shapes))
    cls = codec_class(obj.get("codec")) if isinstance(obj, dict) else None
    if cls is None:
        raise CodecError("container is not a map with a known 'codec'")
    if codec is not None and cls.wire_name != codec:
        raise CodecError(f"container codec {cls.wire_name!r} != announced {codec!r}")
    want_keys = {"codec", "tensors", *cls.header_fields}
    if set(obj) != want_keys:
        raise CodecError(f"container keys {sorted(map(str, obj))} != {sorted(want_keys)}")
    decoder = cls.from_header(obj)
    tensors = obj["tensors"]
    if not isinstance(tensors, list):
        raise CodecError("'tensors' is not a list")
    names = [t[0] if isinstance(t, list) and t else None for t in tensors]
    if names != sorted(expected_shapes) or len(set(names)) != len(names):
        got, want = set(map(str, names)), set(expected_shapes)
        raise CodecError(f"tensor names differ: unknown {sorted(got - want)[:4]}, "
                         f"missing {sorted(want - got)[:4]} (or unsorted/duplicate)")
    n_fields = 2 + cls.tensor_fields
    out: Delta = {}
    for entry in tensors:
        name = entry[0]
        want_shape = tuple(expected_shapes[name])
        if len(entry) != n_fields:
            raise CodecError(f"{name}: entry has {len(entry)} fields, expected {n_fields}")
        shape = entry[1]
        if not isinstance(shape, list) or tuple(shape) != want_shape or \
                any(type(d) is not int for d in shape):
            raise CodecError(f"{name}: shape {shape!r} != expected {list(want_shape)}")
        n = math.prod(want_shape)
        x = decoder.decode_tensor(name, entry[2:], n).reshape(want_shape)
        if not np.isfinite(x).all():
            raise CodecError(f"{name}: non-finite values")
        out[name] = x
    return out
