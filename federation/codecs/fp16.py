"""fp16-zstd/1: IEEE 754 binary16, 2 bytes/value before zstd (2x smaller than raw-zstd/1).

One field per tensor: data, the n values rounded to the nearest float16 (round half to even)
as little-endian bytes. Values beyond float16's range (|x| > 65504) are clamped to +-65504
instead of becoming inf (error feedback keeps the rest for the next round). Relative error
<= 2^-11 per value inside the normal range.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec, CodecError

FP16_CODEC = "fp16-zstd/1"
_F16_MAX = float(np.finfo(np.float16).max)


class Fp16Codec(Codec):
    """Lossy float16; no parameters."""

    wire_name = FP16_CODEC
    tensor_fields = 1
    max_rel_error = 2.0 ** -10      # of the tensor's absmax, with slack for subnormals

    def encode_tensor(self, x: np.ndarray) -> tuple[list[Any], np.ndarray]:
        h = np.clip(x, -_F16_MAX, _F16_MAX).astype("<f2")
        return [h.tobytes()], h.astype(np.float32)

    def decode_tensor(self, name: str, fields: list[Any], n: int) -> np.ndarray:
        (data,) = fields
        if type(data) is not bytes or len(data) != 2 * n:
            raise CodecError(f"{name}: data must be {2 * n} bytes")
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
