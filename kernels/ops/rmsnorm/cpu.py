"""CpuBackend's RMSNorm: the reference's arithmetic (reference.py beside this file) without its
temporaries and copies, rows split over the worker threads (kernels/ops/threads.py). rmsnorm is
bit-identical to the reference; rmsnorm_backward sums mean(g*x) as a row dot (einsum) and
regroups the per-row coefficient (r^3 * mean(g*x)), so differs by float32 rounding only (tests/kernels/test_cpu_ops.py).
Floats are precision.F32, looked up per call.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.threads import run_split


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """As reference.rmsnorm: x (N, C), w (C,) -> y (N, C), rstd (N,); same values, bit for bit."""
    F = prec.F32
    N = x.shape[0]
    y = np.empty(x.shape, np.result_type(x, w))
    rstd = np.empty(N, F)

    def rows(lo, hi):
        xr, yr, rr = x[lo:hi], y[lo:hi], rstd[lo:hi]
        np.multiply(xr, xr, out=yr)
        np.mean(yr, axis=-1, dtype=F, out=rr)
        rr += F(eps)
        np.sqrt(rr, out=rr)
        np.divide(F(1.0), rr, out=rr)
        np.multiply(xr, rr[:, None], out=yr)
        yr *= w
    run_split(rows, N)
    return y, rstd


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """As reference.rmsnorm_backward: dx = r*g - x * (r^3 * mean(g*x)), g = w*dy. -> (N, C)."""
    F = prec.F32
    N = x.shape[0]
    dx = np.empty(x.shape, np.result_type(dy, x, w))

    def rows(lo, hi):
        g = np.multiply(dy[lo:hi], w, out=dx[lo:hi])
        xr, r = x[lo:hi], rstd[lo:hi]
        c = np.einsum("ij,ij->i", g, xr)                   # row dots, no (rows, C) temporary
        c *= r * r * r / F(x.shape[1])
        g *= r[:, None]
        g -= np.multiply(xr, c[:, None])
    run_split(rows, N)
    return dx
