"""int8-block-zstd/1: absmax-scaled int8 blocks (the default, lossy codec).

Each tensor is flattened and cut into blocks of `block` values (the last one may be short).
Per block: scale = absmax / 127 (float32), q = round(x / scale) clamped to [-127, 127] (int8;
round half to even), decoded x' = q * scale, so |x - x'| <= scale / 2. Fields per tensor:
q (int8 bytes, n) and scales (little-endian float32 bytes, ceil(n / block)); the container
carries "block". Absmax-scaled blocks as in GGML's Q8_0 and LLM.int8 (Dettmers et al. 2022,
arXiv:2208.07339), with 256-value blocks. ~1 byte/value before zstd.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Codec, CodecError

INT8_CODEC = "int8-block-zstd/1"
DEFAULT_BLOCK = 256
MIN_BLOCK, MAX_BLOCK = 16, 1 << 16


class Int8BlockCodec(Codec):
    """Blockwise absmax int8. block: values per scale, in [MIN_BLOCK, MAX_BLOCK] (ValueError)."""

    wire_name = INT8_CODEC
    header_fields = ("block",)
    max_rel_error = 0.5 / 127
    tensor_fields = 2

    def __init__(self, block: int = DEFAULT_BLOCK) -> None:
        if type(block) is not int or not MIN_BLOCK <= block <= MAX_BLOCK:
            raise ValueError(f"block must be in [{MIN_BLOCK}, {MAX_BLOCK}], got {block}")
        self.block = block

    def header(self) -> dict[str, Any]:
        return {"block": self.block}

    @classmethod
    def from_header(cls, container: Mapping[str, Any]) -> Int8BlockCodec:
        block = container["block"]
        if type(block) is not int or not MIN_BLOCK <= block <= MAX_BLOCK:
            raise CodecError(f"bad block size {block!r}")
        return cls(block)

    def encode_tensor(self, x: np.ndarray) -> tuple[list[Any], np.ndarray]:
        q, scales = quantize(x, self.block)
        return [q.tobytes(), scales.astype("<f4").tobytes()], dequantize(q, scales, self.block)

    def decode_tensor(self, name: str, fields: list[Any], n: int) -> np.ndarray:
        q_bytes, s_bytes = fields
        n_blocks = -(-n // self.block)
        if type(q_bytes) is not bytes or len(q_bytes) != n:
            raise CodecError(f"{name}: q must be {n} bytes")
        if type(s_bytes) is not bytes or len(s_bytes) != 4 * n_blocks:
            raise CodecError(f"{name}: scales must be {4 * n_blocks} bytes")
        q = np.frombuffer(q_bytes, dtype=np.int8)
        scales = np.frombuffer(s_bytes, dtype="<f4").astype(np.float32)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise CodecError(f"{name}: negative or non-finite scales")
        if (q == -128).any():
            raise CodecError(f"{name}: q outside [-127, 127]")
        return dequantize(q, scales, self.block)


def quantize(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """x float32 (n,) -> q int8 (n,), scales float32 (ceil(n / block),)."""
    n = x.size
    n_blocks = -(-n // block)
    padded = np.zeros(n_blocks * block, dtype=np.float32)
    padded[:n] = x
    blocks = padded.reshape(n_blocks, block)                        # (nb, block)
    scales = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)  # (nb,)
    ratio = np.zeros_like(blocks)
    np.divide(blocks, scales[:, None], out=ratio, where=scales[:, None] > 0)  # all-zero block -> 0
    q = np.clip(np.rint(ratio), -127, 127).astype(np.int8).reshape(-1)[:n]
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """q int8 (n,), scales float32 (nb,) -> float32 (n,); one float32 multiply per value."""
    n = q.size
    idx = np.arange(n) // block
    with np.errstate(over="ignore"):  # hostile scales may overflow; the caller checks isfinite
        return q.astype(np.float32) * scales[idx]
