"""NumPy reference of the RMSNorm family: forward, input gradient (weight frozen) and the weight
gradient of pretraining (rmsnorm.wgsl, rmsnorm_weight_grad.wgsl + _finish).

Source: transformers' modeling_bitnet.py (BitNetRMSNorm). eps comes from the model config
(rms_norm_eps). Floats are precision.F32; functions are pure.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """y = w * x / sqrt(mean(x^2) + eps) per row. x (N, C), w (C,) -> y (N, C), rstd (N,)."""
    rstd = (1.0 / np.sqrt(np.mean(x * x, axis=-1, dtype=prec.F32) + prec.F32(eps))).astype(prec.F32)
    return (x * rstd[:, None] * w).astype(prec.F32), rstd


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """Input gradient of rmsnorm (w frozen): dx = r*g - x*r^3*mean(g*x), g = w*dy. -> (N, C)."""
    g = dy * w
    r = rstd[:, None]
    return (r * g - x * (r ** 3) * np.mean(g * x, axis=-1, keepdims=True, dtype=prec.F32)).astype(prec.F32)


def rmsnorm_weight_grad(dy: np.ndarray, x: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """Weight gradient of y = w * x * rstd: dw[c] = sum_n dy[n, c] * x[n, c] * rstd[n].

    dy, x (N, C), rstd (N,) (rmsnorm's second output) -> dw (C,).
    """
    return np.sum(dy * x * rstd[:, None], axis=0, dtype=prec.F32).astype(prec.F32)
