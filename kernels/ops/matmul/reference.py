"""NumPy reference of the dense matmul (LoRA projections, lm_head, weight gradients): matmul.wgsl,
and of its `widen` entry (float16 table rows to float32, for the lm_head's 128 x 128 tiles).

Floats are precision.F32; the functions are pure.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
           alpha: float = 1.0, acc: np.ndarray | None = None) -> np.ndarray:
    """alpha * op(a) @ op(b) (+ acc). op(a) (M, K), op(b) (K, N) -> (M, N) float32."""
    A = a.T if trans_a else a
    Bm = b.T if trans_b else b
    out = (A @ Bm).astype(prec.F32)
    if alpha != 1.0:
        out *= prec.F32(alpha)
    if acc is not None:
        out += acc
    return out


def widen_f16(table: np.ndarray, off: int, total: int) -> np.ndarray:
    """float16 elements off .. off + total of `table` (any shape, read flat) as float32
    (exact: every float16 is a float32). -> float32 (total,)."""
    flat = np.asarray(table, np.float16).reshape(-1)
    if off < 0 or total < 0 or off + total > flat.size:
        raise ValueError(f"widen_f16: elements {off}..{off + total} of {flat.size}")
    return flat[off:off + total].astype(prec.F32)
