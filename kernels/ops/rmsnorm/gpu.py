"""GPU launchers of the RMSNorm family (rmsnorm.wgsl forward/backward, rmsnorm_weight_grad.wgsl
+ rmsnorm_weight_grad_finish.wgsl) for GpuBackend; semantics: reference.py beside this file."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.device import Tensor, grid_for
from bitswarm.kernels.ops.check import check

_NORM_ROWS = 64   # rows per partial sum of rmsnorm_weight_grad (ROWS in the shader)


def rmsnorm(be, x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """x f32 (N, C), w (C,) -> y (N, C), rstd (N,). One workgroup per row."""
    N, C = x.shape
    check(w.shape == (C,), f"rmsnorm weight {w.shape} does not match x {x.shape}")
    y, rstd = be._new((N, C)), be._new((N,))
    be._launch("rmsnorm", [x, w, y, rstd], grid_for(N), dict(rows=N, c=C, eps=np.float32(eps)))
    return y, rstd


def rmsnorm_backward(be, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor) -> Tensor:
    """Input gradient (w frozen): dy, x (N, C), w (C,), rstd (N,) -> dx (N, C)."""
    N, C = x.shape
    check(dy.shape == x.shape and w.shape == (C,) and rstd.shape == (N,),
           f"rmsnorm_backward shapes dy {dy.shape} x {x.shape} w {w.shape} rstd {rstd.shape}")
    dx = be._new((N, C))
    be._launch("rmsnorm_backward", [dy, x, w, rstd, dx], grid_for(N), dict(rows=N, c=C, eps=0.0))
    return dx


def rmsnorm_weight_grad(be, dy: Tensor, x: Tensor, rstd: Tensor) -> Tensor:
    """dy, x f32 (N, C), rstd (N,) -> dw f32 (C,) (two deterministic passes)."""
    N, C = x.shape
    if dy.shape != x.shape or rstd.shape != (N,):
        raise ValueError(f"rmsnorm_weight_grad shapes dy {dy.shape} x {x.shape} rstd {rstd.shape}")
    chunks = max(1, -(-N // _NORM_ROWS))
    part = be._new((chunks, C))
    dw = be._new((C,))
    params = dict(n=N, c=C, chunks=chunks)
    be._launch("rmsnorm_weight_grad", [dy, x, rstd, part], be._ew_grid(chunks * C), params)
    be._launch("rmsnorm_weight_grad", [part, dw], be._ew_grid(C), params, name="finish")
    return dw
