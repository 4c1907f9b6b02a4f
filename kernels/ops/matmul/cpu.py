"""CpuBackend's dense matmul: reference.matmul (beside this file) without the float32 copy of
its float32 product, alpha applied to the smaller operand instead of the product (one pass
over the rank-r side, not over the (N, D) output), rows split over the worker threads when the
product is large (kernels/ops/threads.py). Bit-identical to the reference when alpha is a power
of two (LoRA's alpha / r = 16 / 8), else within float32 rounding. Floats are precision.F32."""
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
    if alpha != 1.0:      # scale the smaller operand (LoRA's rank-r side), not the product
        if A.size <= Bm.size:
            A = A * F(alpha)
        else:
            Bm = Bm * F(alpha)

    def rows(lo, hi):
        o = np.matmul(A[lo:hi], Bm, out=out[lo:hi])
        if acc is not None:
            o += acc[lo:hi]
    # small products (LoRA's rank-r sides) run on the calling thread
    run_split(rows, M, min_rows=max(128, (1 << 20) // max(1, K * Bm.shape[1])))
    return out
