"""CpuBackend's dense matmul: reference.matmul (beside this file) without the float32 copy of
its float32 product, so bit-identical to it. Floats are precision.F32."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.threads import run_split


def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
           alpha: float = 1.0, acc: np.ndarray | None = None) -> np.ndarray:
    """alpha * op(a) @ op(b) (+ acc). op(a) (M, K), op(b) (K, N) -> (M, N)."""
    A, Bm = (a.T if trans_a else a), (b.T if trans_b else b)
    F = prec.F32
    M, K = A.shape
    out = np.empty((M, Bm.shape[1]), np.result_type(A, Bm, F))
    alpha = F(alpha)

    def rows(lo, hi):
        o = np.matmul(A[lo:hi], Bm, out=out[lo:hi])
        if alpha != 1.0:
            o *= alpha
        if acc is not None:
            o += acc[lo:hi]
    # small products (LoRA's rank-r sides) run on the calling thread
    run_split(rows, M, min_rows=max(128, (1 << 20) // max(1, K * Bm.shape[1])))
    return out
