"""NumPy reference of the dense matmul (LoRA projections, lm_head, weight gradients): matmul.wgsl.

Floats are precision.F32; the function is pure.
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
