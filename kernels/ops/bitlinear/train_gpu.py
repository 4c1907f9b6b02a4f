"""GPU launchers of the BitLinear family's pretraining ops for GpuBackend: absmean ternarization
of latent weights (ternarize.wgsl, then ternarize_pack.wgsl into the 2-bit GPU layout) and the
dequantized activations of the weight gradient (dequantize_act.wgsl); semantics: reference.py
beside this file. The weight-gradient matmul itself is GpuBackend.matmul with trans_a.

bitlinear takes weight_scale as a host scalar in its uniform parameters, so `ternarize_all`
reads every projection's scale back in ONE small download per step (which also serves as the
step's synchronization point).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bitswarm.kernels.device import Tensor
from bitswarm.kernels.ops.bitlinear.gpu import GpuTernary


def ternarize_all(be, ws: Sequence[Tensor]) -> list[GpuTernary]:
    """Absmean-ternarize latent f32 (out, in) tensors -> GpuTernary handles (codes packed on the
    GPU, scales downloaded together). Raises ValueError for a non-2-D tensor,
    FloatingPointError when a weight holds NaN or Inf."""
    if not ws:
        return []
    scales = be._new((len(ws),))
    out = []
    for slot, w in enumerate(ws):
        if len(w.shape) != 2 or w.dtype != "float32":
            raise ValueError(f"ternarize needs a 2-D float32 weight, got {w}")
        O, K = w.shape
        k16 = (K + 15) // 16
        params = dict(out=O, k=K, k16=k16, slot=slot)
        be._launch("ternarize_all", [w, scales], (1, 1, 1), params)
        packed = be._new((O, k16), "int32")
        be._launch("ternarize_all", [w, scales, packed], be._ew_grid(O * k16), params, name="pack")
        out.append((packed, O, K))
    s = be.ctx.read(scales)
    if not np.all(np.isfinite(s)):
        raise FloatingPointError("ternarize: a latent weight holds NaN or Inf")
    return [GpuTernary(p, O, K, np.float32(s[i])) for i, (p, O, K) in enumerate(out)]


def dequantize_act(be, xq: Tensor, x_scale: Tensor) -> Tensor:
    """int8 (N, C) packed activations, f32 (N,) scales -> f32 (N, C) = xq / x_scale."""
    if xq.dtype != "int8" or x_scale.shape != (xq.shape[0],):
        raise ValueError(f"dequantize_act needs int8 (N, C) and (N,) scales, got {xq}, {x_scale}")
    N, C = xq.shape
    y = be._new((N, C))
    be._launch("dequantize_act", [xq, x_scale, y], be._ew_grid(N * C),
               dict(total=N * C, c=C, c4=(C + 3) // 4))
    return y
