"""CpuBackend's RoPE: reference.rope (beside this file) written into one output array with
in-place products (no concatenate, no float32 copy), sequences split over the worker threads
(kernels/ops/threads.py); bit-identical to it. With numba (kernels/ops/jit.py) one fused loop,
the same float32 operations in the same order. Floats are precision.F32."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import jit
from bitswarm.kernels.ops.threads import ew_rows, run_split


@jit.kernel
def _rope_seqs(x, cos, sin, inverse, y):
    """x, y (b, T, H, hd) float32, cos / sin (T, hd/2): y1 = x1*c - x2*s, y2 = x2*c + x1*s
    (inverse: y1 = x1*c + x2*s, y2 = x2*c - x1*s), each product rounded, then the sum."""
    b, T, H, hd = x.shape
    h2 = hd // 2
    for q in range(b):
        for t in range(T):
            for h in range(H):
                for j in range(h2):
                    c = cos[t, j]
                    s = sin[t, j]
                    x1 = x[q, t, h, j]
                    x2 = x[q, t, h, j + h2]
                    if inverse:
                        y[q, t, h, j] = x1 * c + x2 * s
                        y[q, t, h, j + h2] = x2 * c - x1 * s
                    else:
                        y[q, t, h, j] = x1 * c - x2 * s
                        y[q, t, h, j + h2] = x2 * c + x1 * s


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, T: int, H: int, hd: int,
         inverse: bool = False) -> np.ndarray:
    """As reference.rope: x (N, H*hd), N = B*T, cos/sin (>= T, hd/2) -> (N, H*hd)."""
    N = x.shape[0]
    h2 = hd // 2
    xv = x.reshape(N // T, T, H, hd)
    c = cos[:T][None, :, None, :]
    s = sin[:T][None, :, None, :]
    y = np.empty((N // T, T, H, hd), dtype=np.result_type(x, c))
    k = _rope_seqs.for_size(x.size)
    if k is not None and xv.dtype == cos.dtype == sin.dtype == y.dtype == np.float32:
        ct, st = cos[:T], sin[:T]
        run_split(lambda lo, hi: k(xv[lo:hi], ct, st, inverse, y[lo:hi]), N // T,
                  ew_rows(T * H * hd, 1))
        return y.reshape(N, H * hd)

    def seqs(lo, hi):
        x1, x2 = xv[lo:hi, ..., :h2], xv[lo:hi, ..., h2:]
        y1, y2 = y[lo:hi, ..., :h2], y[lo:hi, ..., h2:]
        t = np.multiply(x2, s)
        np.multiply(x1, c, out=y1)
        if inverse:                   # rotate by -angle: x1*c + x2*s, x2*c - x1*s
            y1 += t
            np.multiply(x2, c, out=y2)
            np.multiply(x1, s, out=t)
            y2 -= t
        else:
            y1 -= t
            np.multiply(x2, c, out=y2)
            np.multiply(x1, s, out=t)
            y2 += t
    run_split(seqs, N // T, min_rows=1)
    return y.reshape(N, H * hd)
