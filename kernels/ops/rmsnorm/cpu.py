"""CpuBackend's RMSNorm: the reference's arithmetic (reference.py beside this file) without its
temporaries and copies, rows split over the worker threads (kernels/ops/threads.py). rmsnorm is
bit-identical to the reference; rmsnorm_backward sums mean(g*x) per row and regroups the per-row
coefficient (r^3 * mean(g*x)), so differs by float32 rounding only (tests/kernels/test_cpu_ops.py).
With numba (kernels/ops/jit.py) each row is one fused loop, bit-identical to the NumPy passes
(the row sums in NumPy's pairwise order, jit.pairwise_sum). Floats are precision.F32, looked up
per call.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import jit
from bitswarm.kernels.ops import precision as prec
from bitswarm.kernels.ops.threads import ew_rows, run_split

_JIT_MAX_C = 8192   # rows longer than NumPy's reduction buffer: its passes (order not checked)


@jit.kernel
def _rmsnorm_rows(x, w, eps, y, rstd):
    """rmsnorm of rows x (n, C) float32 into y, rstd: mean(x*x) summed as NumPy's mean sums
    (pairwise, then divided in float64 by the count, as np.mean does), + eps, sqrt, 1 / that;
    y = (x * r) * w."""
    n, C = x.shape
    buf = np.empty(C, x.dtype)
    st = np.empty((3, 64), np.int64)
    vals = np.empty(64, x.dtype)
    for i in range(n):
        for j in range(C):
            buf[j] = x[i, j] * x[i, j]
        s = x.dtype.type(0.0) + pairwise_sum(buf, 0, C, st, vals)
        m = x.dtype.type(np.float64(s) / np.float64(C))
        r = x.dtype.type(1.0) / np.sqrt(m + eps)
        rstd[i] = r
        for j in range(C):
            y[i, j] = (x[i, j] * r) * w[j]


pairwise_sum = jit.pairwise_sum


@jit.kernel
def _rmsnorm_backward_rows(dy, x, w, rstd, dx):
    """dx = (dy*w) * r - x * (sum(dy*w*x) * (((r*r)*r) / C)) per row, the sum in NumPy's
    pairwise order."""
    n, C = x.shape
    buf = np.empty(C, x.dtype)
    st = np.empty((3, 64), np.int64)
    vals = np.empty(64, x.dtype)
    fc = x.dtype.type(C)
    for i in range(n):
        for j in range(C):
            buf[j] = (dy[i, j] * w[j]) * x[i, j]
        d = x.dtype.type(0.0) + pairwise_sum(buf, 0, C, st, vals)
        r = rstd[i]
        c = d * (((r * r) * r) / fc)
        for j in range(C):
            dx[i, j] = (dy[i, j] * w[j]) * r - x[i, j] * c


def _fast(*arrays):
    """The fused loops when numba is there, every array float32 and rows short enough."""
    return (jit.use(arrays[0].size) and all(a.dtype == np.float32 for a in arrays)
            and arrays[0].shape[-1] <= _JIT_MAX_C)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """As reference.rmsnorm: x (N, C), w (C,) -> y (N, C), rstd (N,); same values, bit for bit."""
    F = prec.F32
    N = x.shape[0]
    y = np.empty(x.shape, np.result_type(x, w))
    rstd = np.empty(N, F)
    if _fast(x, w, y, rstd):
        k = _rmsnorm_rows.fast
        run_split(lambda lo, hi: k(x[lo:hi], w, F(eps), y[lo:hi], rstd[lo:hi]), N,
                  ew_rows(x.shape[1]))
        return y, rstd

    def rows(lo, hi):
        xr, yr, rr = x[lo:hi], y[lo:hi], rstd[lo:hi]
        np.multiply(xr, xr, out=yr)
        np.mean(yr, axis=-1, dtype=F, out=rr)
        rr += F(eps)
        np.sqrt(rr, out=rr)
        np.divide(F(1.0), rr, out=rr)
        np.multiply(xr, rr[:, None], out=yr)
        yr *= w
    run_split(rows, N, ew_rows(x.shape[1]))
    return y, rstd


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """As reference.rmsnorm_backward: dx = r*g - x * (r^3 * mean(g*x)), g = w*dy. -> (N, C)."""
    F = prec.F32
    N, C = x.shape
    dx = np.empty(x.shape, np.result_type(dy, x, w))
    if _fast(x, dy, w, rstd, dx):
        k = _rmsnorm_backward_rows.fast
        run_split(lambda lo, hi: k(dy[lo:hi], x[lo:hi], w, rstd[lo:hi], dx[lo:hi]), N,
                  ew_rows(C))
        return dx

    def rows(lo, hi):
        g = np.multiply(dy[lo:hi], w, out=dx[lo:hi])
        xr, r = x[lo:hi], rstd[lo:hi]
        c = np.multiply(g, xr).sum(axis=-1, dtype=F)       # the fused loop's pairwise sums
        c *= r * r * r / F(C)
        g *= r[:, None]
        g -= np.multiply(xr, c[:, None])
    run_split(rows, N, ew_rows(C))
    return dx
