"""CpuBackend's RoPE: reference.rope (beside this file) written into one output array with
in-place products (no concatenate, no float32 copy), sequences split over the worker threads
(kernels/ops/threads.py); bit-identical to it. Floats are precision.F32."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops.threads import run_split


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, T: int, H: int, hd: int,
         inverse: bool = False) -> np.ndarray:
    """As reference.rope: x (N, H*hd), N = B*T, cos/sin (>= T, hd/2) -> (N, H*hd)."""
    N = x.shape[0]
    h2 = hd // 2
    xv = x.reshape(N // T, T, H, hd)
    c = cos[:T][None, :, None, :]
    s = sin[:T][None, :, None, :]
    y = np.empty((N // T, T, H, hd), dtype=np.result_type(x, c))

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
