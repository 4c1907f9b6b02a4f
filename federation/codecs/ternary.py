"""ternary-block-zstd/1: each value one of {-s, 0, +s} per block, 1.6 bits/value + scales.

Per block of `block` values (the last may be short): s = spread x absmean, absmean = mean(|x|)
(float32) as BitNet b1.58's weight quantizer (Ma et al. 2024, arXiv:2402.17764), and q =
stochastic rounding of x / s to an integer, clamped to [-1, 1]: q = floor(x/s + u), u ~ U[0, 1)
(unbiased where |x| <= s, as in TernGrad, Wen et al. 2017, arXiv:1705.07878). Decoded x' = q s.
spread = 2 (the default) clamps ~11% of a Gaussian's values (plain absmean, spread 1: ~42%),
makes about half the trits zero, which zstd's entropy coding turns into ~1.6 bits/value with
the scales, and keeps the rounding error at ~0.5 of the update's norm, so error feedback's
residual stays about one update large (spread 3 clamps 2% but its error, 0.95 of the norm,
lets the residual grow to ~20 updates).
Error feedback (error_feedback.py) carries what clamping and rounding dropped into the next
round. The random stream is seeded from the SHA-256 of the tensor's bytes, so equal inputs give
equal payloads on every machine.

Packing: five trits per byte, byte = sum_i (q_i + 1) * 3^i (3^5 = 243 <= 256; as in llama.cpp's
TQ1_0), so bytes >= 243 are invalid. Fields per tensor: packed (ceil(n/5) bytes), scales
(little-endian float32, ceil(n/block)); blocks of 1024 by default. The container carries
"block" and "spread". 1.63 bits/value before zstd at block 1024 (19.6x smaller than float32),
about 20x after it at spread 2 on LoRA deltas.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Codec, CodecError

TERNARY_CODEC = "ternary-block-zstd/1"
DEFAULT_TERNARY_BLOCK = 1024
DEFAULT_SPREAD = 2
MAX_SPREAD = 8
MIN_BLOCK, MAX_BLOCK = 16, 1 << 16
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


class TernaryBlockCodec(Codec):
    """Blockwise absmean ternary with stochastic rounding. block: values per scale, in
    [MIN_BLOCK, MAX_BLOCK]; spread: the scale in absmeans, an int in [1, MAX_SPREAD]
    (ValueError)."""

    wire_name = TERNARY_CODEC
    header_fields = ("block", "spread")
    tensor_fields = 2

    def __init__(self, block: int = DEFAULT_TERNARY_BLOCK, spread: int = DEFAULT_SPREAD) -> None:
        if type(block) is not int or not MIN_BLOCK <= block <= MAX_BLOCK:
            raise ValueError(f"block must be in [{MIN_BLOCK}, {MAX_BLOCK}], got {block}")
        if type(spread) is not int or not 1 <= spread <= MAX_SPREAD:
            raise ValueError(f"spread must be an int in [1, {MAX_SPREAD}], got {spread!r}")
        self.block, self.spread = block, spread

    def header(self) -> dict[str, Any]:
        return {"block": self.block, "spread": self.spread}

    @classmethod
    def from_header(cls, container: Mapping[str, Any]) -> TernaryBlockCodec:
        block, spread = container["block"], container["spread"]
        if type(block) is not int or not MIN_BLOCK <= block <= MAX_BLOCK:
            raise CodecError(f"bad block size {block!r}")
        if type(spread) is not int or not 1 <= spread <= MAX_SPREAD:
            raise CodecError(f"bad spread {spread!r}")
        return cls(block, spread)

    def encode_tensor(self, x: np.ndarray) -> tuple[list[Any], np.ndarray]:
        n, nb = x.size, -(-x.size // self.block)
        padded = np.zeros(nb * self.block, np.float32)
        padded[:n] = x
        blocks = padded.reshape(nb, self.block)
        counts = np.full(nb, self.block, np.float32)
        counts[-1] = n - (nb - 1) * self.block               # the short last block's mean
        scales = (np.abs(blocks).sum(axis=1, dtype=np.float64) * self.spread
                  / counts).astype(np.float32)
        ratio = np.zeros_like(blocks)
        np.divide(blocks, scales[:, None], out=ratio, where=scales[:, None] > 0)
        seed = int.from_bytes(hashlib.sha256(x.tobytes()).digest()[:8], "little")
        u = np.random.default_rng(seed).random(ratio.shape, dtype=np.float32)
        q = np.clip(np.floor(ratio + u), -1, 1).astype(np.int8).reshape(-1)[:n]
        return [pack_trits(q), scales.astype("<f4").tobytes()], dequantize(q, scales, self.block)

    def decode_tensor(self, name: str, fields: list[Any], n: int) -> np.ndarray:
        packed, s_bytes = fields
        nb = -(-n // self.block)
        if type(packed) is not bytes or len(packed) != -(-n // 5):
            raise CodecError(f"{name}: packed trits must be {-(-n // 5)} bytes")
        if type(s_bytes) is not bytes or len(s_bytes) != 4 * nb:
            raise CodecError(f"{name}: scales must be {4 * nb} bytes")
        scales = np.frombuffer(s_bytes, dtype="<f4").astype(np.float32)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise CodecError(f"{name}: negative or non-finite scales")
        b = np.frombuffer(packed, dtype=np.uint8)
        if (b >= 243).any():
            raise CodecError(f"{name}: packed byte >= 243 is no 5-trit group")
        return dequantize(unpack_trits(b, n), scales, self.block)


def pack_trits(q: np.ndarray) -> bytes:
    """q int8 (n,) in {-1, 0, 1} -> ceil(n/5) bytes, trit i of a group weighted 3^i."""
    d = np.zeros(-(-q.size // 5) * 5, np.uint8)
    d[:q.size] = (q + 1).astype(np.uint8)
    return (d.reshape(-1, 5) * _POW3).sum(axis=1, dtype=np.uint16).astype(np.uint8).tobytes()


def unpack_trits(b: np.ndarray, n: int) -> np.ndarray:
    """Inverse of pack_trits: uint8 (ceil(n/5),), each < 243 -> int8 (n,) in {-1, 0, 1}."""
    d = (b[:, None] // _POW3[None, :]) % 3
    return (d.reshape(-1)[:n].astype(np.int8) - 1)


def dequantize(q: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """q int8 (n,), scales float32 (nb,) -> float32 (n,)."""
    with np.errstate(over="ignore"):
        return q.astype(np.float32) * scales[np.arange(q.size) // block]
