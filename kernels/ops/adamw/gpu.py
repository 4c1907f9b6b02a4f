"""GPU launcher of the AdamW step (adamw.wgsl) for GpuBackend; semantics: reference.py beside
this file. The bias corrections and 1 - beta are computed on the host in float64 and rounded
to float32 once, as the reference does."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.device import Tensor

F32 = np.float32


def adamw_(be, p: Tensor, g: Tensor, m: Tensor, v: Tensor, *, step: int, lr: float,
           beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
           weight_decay: float = 0.0) -> None:
    """In place on p, m, v (f32, same shapes); step counts from 1. Raises ValueError otherwise."""
    if not p.shape == g.shape == m.shape == v.shape:
        raise ValueError(f"adamw_ shapes differ: p {p.shape} g {g.shape} m {m.shape} v {v.shape}")
    if step < 1:
        raise ValueError(f"adamw_ step counts from 1, got {step}")
    bc = _bias_corrections(be, np.array([1.0 - beta1 ** step, 1.0 - beta2 ** step], F32))
    be._launch("adamw_", [p, g, m, v, bc], be._ew_grid(p.size), dict(
        total=p.size, decay=F32(1.0 - lr * weight_decay), beta1=F32(beta1),
        omb1=F32(1.0 - beta1), beta2=F32(beta2), omb2=F32(1.0 - beta2), lr=F32(lr),
        eps=F32(eps)))


def _bias_corrections(be, values: np.ndarray) -> Tensor:
    """The backend's one (bc1, bc2) tensor, holding `values`: rewritten (in encoder order, so
    dispatches already recorded read the old pair) only when they change, i.e. once per
    optimizer step. One buffer keeps every AdamW dispatch's bind group cached across steps."""
    if be._adamw_bc is None:
        be._adamw_bc = be._new((2,))
    t = be._adamw_bc
    if be._adamw_bc_values is None or not np.array_equal(be._adamw_bc_values, values):
        be.ctx.write(t, values)
        be._adamw_bc_values = values
    return t
