"""raw-zstd/1: float32 little-endian, lossless (4 bytes/value before zstd).

One field per tensor: data, the n values as little-endian float32 bytes. For exact transfer
(tests, debugging, small adapters) at about 4x the int8 codec's size.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec, CodecError

RAW_CODEC = "raw-zstd/1"


class RawCodec(Codec):
    """Lossless float32; no parameters."""

    wire_name = RAW_CODEC
    max_rel_error = 0.0
    tensor_fields = 1

    def encode_tensor(self, x: np.ndarray) -> tuple[list[Any], np.ndarray]:
        return [x.astype("<f4").tobytes()], x.copy()

    def decode_tensor(self, name: str, fields: list[Any], n: int) -> np.ndarray:
        (data,) = fields
        if type(data) is not bytes or len(data) != 4 * n:
            raise CodecError(f"{name}: data must be {4 * n} bytes")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
