"""CpuBackend's dense matmul: reference.matmul (beside this file) without the float32 copy of
its float32 product, so bit-identical to it. Floats are precision.F32."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
           alpha: float = 1.0, acc: np.ndarray | None = None) -> np.ndarray:
    """alpha * op(a) @ op(b) (+ acc). op(a) (M, K), op(b) (K, N) -> (M, N)."""
    out = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
    if out.dtype != prec.F32:
        out = out.astype(prec.F32)
    if alpha != 1.0:
        out *= prec.F32(alpha)
    if acc is not None:
        out += acc
    return out
