"""NumPy reference of the AdamW step (adamw.wgsl): Loshchilov & Hutter 2019, as torch.optim.AdamW.

Updates p, m, v in place (as the optimizer it is). Floats are precision.F32.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def adamw_(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, step: int, lr: float,
           beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
           weight_decay: float = 0.0) -> None:
    """One AdamW step in place on p, m, v (torch.optim.AdamW semantics; step counts from 1)."""
    p *= prec.F32(1.0 - lr * weight_decay)
    m *= prec.F32(beta1)
    m += prec.F32(1.0 - beta1) * g
    v *= prec.F32(beta2)
    v += prec.F32(1.0 - beta2) * g * g
    bc1 = prec.F32(1.0 - beta1 ** step)
    bc2 = prec.F32(1.0 - beta2 ** step)
    p -= prec.F32(lr) * (m / bc1) / (np.sqrt(v / bc2) + prec.F32(eps))
