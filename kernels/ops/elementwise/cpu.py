"""CpuBackend's elementwise ops: the reference's arithmetic (reference.py beside this file) in
place, with no float32 copy of float32 results, rows split over the worker threads
(kernels/ops/threads.py). Bit-identical to the reference (doubling is exact, so 2*r*u*dh may be
grouped as (r*u*dh)*2); with numba (kernels/ops/jit.py) relu2_gate and its backward are one
fused loop each, the same float32 operations in the same order. Floats are precision.F32.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import jit
from bitswarm.kernels.ops.threads import ew_rows, run_split


@jit.kernel
def _relu2_rows(g, u, h):
    """h = r * r * u, r = max(g, 0) (NumPy's maximum: g when g >= 0 or g is NaN)."""
    n, C = g.shape
    z = g.dtype.type(0.0)
    for i in range(n):
        for j in range(C):
            v = g[i, j]
            r = v if (v >= z or v != v) else z
            h[i, j] = (r * r) * u[i, j]


@jit.kernel
def _relu2_backward_rows(dh, g, u, dg, du):
    """dg = ((r * u) * dh) * 2, du = (r * r) * dh, r = max(g, 0)."""
    n, C = g.shape
    z = g.dtype.type(0.0)
    two = g.dtype.type(2.0)
    for i in range(n):
        for j in range(C):
            v = g[i, j]
            r = v if (v >= z or v != v) else z
            d = dh[i, j]
            dg[i, j] = ((r * u[i, j]) * d) * two
            du[i, j] = (r * r) * d


def _fast(*arrays) -> bool:
    return jit.use(arrays[0].size) and all(a.dtype == np.float32 and a.ndim == 2 for a in arrays)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b, same shapes (a new array)."""
    out = np.empty(np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b))
    if a.shape != out.shape or b.shape != out.shape or out.ndim == 0:
        return np.add(a, b, out=out)
    run_split(lambda lo, hi: np.add(a[lo:hi], b[lo:hi], out=out[lo:hi]), out.shape[0],
              ew_rows(out.size // max(1, out.shape[0])))
    return out


def relu2_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """h = relu(g)^2 * u, (N, I)."""
    h = np.empty(g.shape, np.result_type(g, u))
    if g.shape == u.shape and _fast(g, u, h):
        k = _relu2_rows.fast
        run_split(lambda lo, hi: k(g[lo:hi], u[lo:hi], h[lo:hi]), g.shape[0], ew_rows(g.shape[1]))
        return h

    def rows(lo, hi):
        r = np.maximum(g[lo:hi], 0, out=h[lo:hi])
        r *= r
        r *= u[lo:hi]
    run_split(rows, g.shape[0], ew_rows(g.shape[1]))
    return h


def relu2_gate_backward(dh: np.ndarray, g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dg, du) = (2*relu(g)*u*dh, relu(g)^2*dh)."""
    t = np.result_type(dh, g, u)
    dg, du = np.empty(g.shape, t), np.empty(g.shape, t)
    if g.shape == u.shape == dh.shape and _fast(dh, g, u, dg):
        k = _relu2_backward_rows.fast
        run_split(lambda lo, hi: k(dh[lo:hi], g[lo:hi], u[lo:hi], dg[lo:hi], du[lo:hi]),
                  g.shape[0], ew_rows(g.shape[1]))
        return dg, du

    def rows(lo, hi):
        r = np.maximum(g[lo:hi], 0, out=dg[lo:hi])
        d = np.multiply(r, r, out=du[lo:hi])
        d *= dh[lo:hi]
        r *= u[lo:hi]
        r *= dh[lo:hi]
        r *= 2
    run_split(rows, g.shape[0], ew_rows(g.shape[1]))
    return dg, du
