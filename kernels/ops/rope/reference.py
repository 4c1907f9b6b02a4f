"""NumPy reference of RoPE (rotate_half, transformers' modeling_bitnet.py): rope.wgsl for a batch
of sequences (and its inverse, the backward), rope_at.wgsl for M tokens of one sequence at an
offset (decoding), and `RopeTables`, the table cache both backends use.

Floats are precision.F32; functions are pure.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def rope_tables(T: int, hd: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (T, hd/2) for positions 0..T-1, inv_freq = theta^(-2i/hd) (transformers' default)."""
    inv_freq = (1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.int64).astype(prec.F32) / hd))).astype(prec.F32)
    ang = np.arange(T, dtype=prec.F32)[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(prec.F32), np.sin(ang).astype(prec.F32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, T: int, H: int, hd: int,
         inverse: bool = False) -> np.ndarray:
    """x*cos + rotate_half(x)*sin per head. x (N, H*hd), N = B*T, cos/sin (>=T, hd/2).

    inverse=True rotates by -angle: the backward of rope (rotations are orthogonal).
    """
    N = x.shape[0]
    h2 = hd // 2
    xv = x.reshape(N // T, T, H, hd)
    c = cos[:T][None, :, None, :]
    s = (-sin if inverse else sin)[:T][None, :, None, :]
    x1, x2 = xv[..., :h2], xv[..., h2:]
    y = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return y.reshape(N, H * hd).astype(prec.F32)


def rope_at(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, pos: int, H: int,
            hd: int) -> np.ndarray:
    """`rope` of M consecutive tokens of one sequence at positions pos .. pos+M-1.

    x (M, H*hd), cos/sin (>= pos+M, hd/2) from rope_tables -> (M, H*hd). Raises ValueError
    when the tables are too short or pos < 0.
    """
    M = x.shape[0]
    if pos < 0 or cos.shape[0] < pos + M:
        raise ValueError(f"rope_at: positions {pos}..{pos + M - 1} outside tables of "
                         f"{cos.shape[0]} rows")
    return rope(x, cos[pos:pos + M], sin[pos:pos + M], M, H, hd)


class RopeTables:
    """cos/sin tables per (hd, theta), grown on demand and kept: the one RoPE table cache of
    both backends (CpuBackend keeps NumPy arrays, GpuBackend uploads them: `put`).

    put: host float32 array -> what the backend stores (identity for NumPy).
    get(rows, hd, theta, grow): tables covering >= rows positions. A miss builds max(rows, 128)
    rows; with grow=True (decode asks for one more row per token) at least twice the rows held,
    so the tables are rebuilt O(log L) times over a generation."""

    def __init__(self, put=lambda a: a) -> None:
        self._put = put
        self._tables: dict[tuple[int, float], tuple[int, object, object]] = {}

    def get(self, rows: int, hd: int, theta: float, grow: bool = False) -> tuple:
        key = (hd, float(theta))
        hit = self._tables.get(key)
        if hit is None or hit[0] < rows:
            n = max(rows, 128, 2 * hit[0] if grow and hit is not None else 0)
            cos, sin = rope_tables(n, hd, theta)
            hit = self._tables[key] = (n, self._put(cos), self._put(sin))
        return hit[1], hit[2]

    def clear(self) -> None:
        """Drop every table (benchmarks measure a fresh process's allocations)."""
        self._tables.clear()
