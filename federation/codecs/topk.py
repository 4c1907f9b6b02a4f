"""topk-zstd/1: the k largest-magnitude values of each tensor, their positions delta-coded.

Top-k sparsification with error feedback (Stich et al. 2018, "Sparsified SGD with memory",
arXiv:1809.07599; the error feedback is error_feedback.py): per tensor of n values keep
k = ceil(n * ppm / 10^6) (at least 1) entries of largest |x| (ties: the lower index), in
increasing index order. Fields per tensor:
  gaps   — the index gaps (first index, then index[i] - index[i-1] - 1) as unsigned LEB128
           varints (1 byte below 128, as in protobuf's varint), so dense clusters cost a byte;
  values — the kept values as little-endian float16 (clamped to +-65504).
The container carries "ppm" (kept values per million). At the default 30,000 ppm (3%) a value
costs ~3 bytes where kept: ~40x smaller than float32 before zstd.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Codec, CodecError

TOPK_CODEC = "topk-zstd/1"
DEFAULT_PPM = 30_000
_F16_MAX = float(np.finfo(np.float16).max)


def kept(n: int, ppm: int) -> int:
    """Values kept of a tensor of n: ceil(n * ppm / 10^6), at least 1."""
    return max(1, min(n, -(-n * ppm // 1_000_000)))


class TopKCodec(Codec):
    """Top-k sparsification. ppm: kept values per million, in [1, 10^6] (ValueError)."""

    wire_name = TOPK_CODEC
    header_fields = ("ppm",)
    tensor_fields = 2

    def __init__(self, ppm: int = DEFAULT_PPM) -> None:
        if type(ppm) is not int or not 1 <= ppm <= 1_000_000:
            raise ValueError(f"ppm must be an int in [1, 1000000], got {ppm!r}")
        self.ppm = ppm

    @classmethod
    def from_fraction(cls, fraction: float) -> TopKCodec:
        """The codec keeping `fraction` (0 < fraction <= 1) of each tensor. ValueError."""
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(f"top-k fraction must be in (0, 1], got {fraction!r}")
        return cls(max(1, round(fraction * 1_000_000)))

    def header(self) -> dict[str, Any]:
        return {"ppm": self.ppm}

    @classmethod
    def from_header(cls, container: Mapping[str, Any]) -> TopKCodec:
        ppm = container["ppm"]
        if type(ppm) is not int or not 1 <= ppm <= 1_000_000:
            raise CodecError(f"bad ppm {ppm!r}")
        return cls(ppm)

    def encode_tensor(self, x: np.ndarray) -> tuple[list[Any], np.ndarray]:
        k = kept(x.size, self.ppm)
        # A stable sort on -|x| breaks ties by the lower index: the same choice everywhere.
        idx = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
        vals = np.clip(x[idx], -_F16_MAX, _F16_MAX).astype("<f2")
        gaps = np.diff(idx, prepend=-1) - 1
        out = np.zeros(x.size, np.float32)
        out[idx] = vals.astype(np.float32)
        return [encode_varints(gaps.astype(np.uint64)), vals.tobytes()], out

    def decode_tensor(self, name: str, fields: list[Any], n: int) -> np.ndarray:
        gap_bytes, v_bytes = fields
        k = kept(n, self.ppm)
        if type(v_bytes) is not bytes or len(v_bytes) != 2 * k:
            raise CodecError(f"{name}: values must be {2 * k} bytes")
        if type(gap_bytes) is not bytes or not k <= len(gap_bytes) <= 5 * k:
            raise CodecError(f"{name}: gaps must be {k} varints")
        gaps = decode_varints(gap_bytes, k, name)
        idx = np.cumsum(gaps + 1) - 1                 # int64: at most k * 2^35, no overflow
        if idx[-1] >= n:
            raise CodecError(f"{name}: index {int(idx[-1])} out of range for {n} values")
        out = np.zeros(n, np.float32)
        out[idx] = np.frombuffer(v_bytes, dtype="<f2").astype(np.float32)
        return out


def encode_varints(v: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (uint64 (k,), each < 2^35) -> bytes."""
    v = v.astype(np.uint64)
    nbytes = np.ones(v.size, np.int64)
    for i in range(1, 5):
        nbytes += v >= (np.uint64(1) << np.uint64(7 * i))
    ends = np.cumsum(nbytes)
    out = np.zeros(int(ends[-1]) if v.size else 0, np.uint8)
    starts = ends - nbytes
    for i in range(5):
        has = nbytes > i
        pos = starts[has] + i
        chunk = (v[has] >> np.uint64(7 * i)) & np.uint64(0x7F)
        more = (nbytes[has] > i + 1).astype(np.uint64) << np.uint64(7)
        out[pos] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def decode_varints(data: bytes, k: int, name: str) -> np.ndarray:
    """Exactly k unsigned LEB128 varints of at most 5 bytes each filling `data` -> int64 (k,).
    Raises CodecError otherwise."""
    b = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if ends.size != k or ends[-1] != b.size - 1:
        raise CodecError(f"{name}: gaps must be exactly {k} varints")
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (ends - starts >= 5).any():
        raise CodecError(f"{name}: a gap varint is longer than 5 bytes")
    group = np.repeat(np.arange(k), ends - starts + 1)
    shift = (np.arange(b.size) - starts[group]) * 7
    return np.add.reduceat((b & 0x7F).astype(np.int64) << shift, starts)
