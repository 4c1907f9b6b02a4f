"""CpuBackend's RMSNorm: the reference's arithmetic (reference.py beside this file) without its
temporaries and copies. rmsnorm is bit-identical to the reference; rmsnorm_backward regroups
the per-row coefficient (r^3 * mean(g*x)) and so differs by float32 rounding only
(tests/kernels/test_cpu_ops.py). Floats are precision.F32, looked up per call.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """As reference.rmsnorm: x (N, C), w (C,) -> y (N, C), rstd (N,); same values, bit for bit."""
    F = prec.F32
    sq = np.multiply(x, x)
    rstd = np.mean(sq, axis=-1, dtype=F)
    rstd += F(eps)
    np.sqrt(rstd, out=rstd)
    np.divide(F(1.0), rstd, out=rstd)
    y = np.multiply(x, rstd[:, None], out=sq)
    y *= w
    return y, rstd


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """As reference.rmsnorm_backward: dx = r*g - x * (r^3 * mean(g*x)), g = w*dy. -> (N, C)."""
    F = prec.F32
    g = np.multiply(dy, w)
    t = np.multiply(g, x)
    c = np.mean(t, axis=-1, dtype=F)                       # (N,)
    c *= rstd * rstd * rstd
    g *= rstd[:, None]
    np.multiply(x, c[:, None], out=t)
    g -= t
    return g
