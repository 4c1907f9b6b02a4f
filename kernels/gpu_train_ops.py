"""GpuTrainOps: the training-only ops of kernels/reference_train.py on wgpu, for PretrainModel.

Works with a GpuBackend instance through kernels/device.py (its Context, Tensors, dispatch); the
shaders are wgsl/ternarize.wgsl, ternarize_pack.wgsl, dequantize_act.wgsl,
rmsnorm_weight_grad.wgsl (+ _finish) and embedding_backward.wgsl. The weight-gradient matmul
itself is GpuBackend.matmul with trans_a.

Ternarization runs on the GPU (absmean reduction, then packing into GpuBackend's 2-bit layout);
GpuBackend's bitlinear takes weight_scale as a host scalar in its uniform parameters, so
`ternarize_all` reads every projection's scale back in ONE small download per step (which also
serves as the step's synchronization point).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bitswarm.kernels import reference_train as rt
from bitswarm.kernels.device import Tensor, grid_for, pack_params
from bitswarm.kernels.gpu_backend import GpuBackend, GpuTernary
from bitswarm.kernels.registry import shader_source

_EW = 256
_NORM_ROWS = 64   # rows per partial sum of rmsnorm_weight_grad (ROWS in the shader)


class GpuTrainOps:
    """TrainOps (training/engine.py) on a GpuBackend; semantics of kernels/reference_train.py."""

    def __init__(self, backend: GpuBackend) -> None:
        self.be = backend
        self.ctx = backend.ctx

    def _launch(self, shader: str, entry: str, bindings, params: bytes, grid) -> None:
        k = self.ctx.kernel(shader, lambda: shader_source(f"{shader}.wgsl"), entry)
        self.ctx.dispatch(k, bindings, params, grid)

    # ------------------------------------------------------------ ternarize
    def ternarize_all(self, ws: Sequence[Tensor]) -> list[GpuTernary]:
        """Absmean-ternarize latent f32 (out, in) tensors -> GpuTernary handles (codes packed on
        the GPU, scales downloaded together). Raises ValueError for a non-2-D tensor."""
        if not ws:
            return []
        scales = self.ctx.alloc((len(ws),), "float32")
        out = []
        for slot, w in enumerate(ws):
            if len(w.shape) != 2 or w.dtype != "float32":
                raise ValueError(f"ternarize needs a 2-D float32 weight, got {w}")
            O, K = w.shape
            k16 = (K + 15) // 16
            params = pack_params("uuuu", O, K, k16, slot)
            self._launch("ternarize", "absmean", [w, scales], params, (1, 1, 1))
            packed = self.ctx.alloc((O, k16), "int32")
            self._launch("ternarize_pack", "main", [w, scales, packed], params,
                         grid_for(-(-O * k16 // _EW)))
            out.append((packed, O, K))
        s = self.ctx.read(scales)
        if not np.all(np.isfinite(s)):
            raise FloatingPointError("ternarize: a latent weight holds NaN or Inf")
        return [GpuTernary(p, O, K, np.float32(s[i])) for i, (p, O, K) in enumerate(out)]

    def ternarize(self, w: Tensor) -> GpuTernary:
        return self.ternarize_all([w])[0]

    # ------------------------------------------------------------ activations
    def dequantize_act(self, xq: Tensor, x_scale: Tensor) -> Tensor:
        """int8 (N, C) packed activations, f32 (N,) scales -> f32 (N, C) = xq / x_scale."""
        if xq.dtype != "int8" or x_scale.shape != (xq.shape[0],):
            raise ValueError(f"dequantize_act needs int8 (N, C) and (N,) scales, got {xq}, {x_scale}")
        N, C = xq.shape
        y = self.ctx.alloc((N, C), "float32")
        self._launch("dequantize_act", "main", [xq, x_scale, y],
                     pack_params("uuu", N * C, C, (C + 3) // 4), grid_for(-(-N * C // _EW)))
        return y

    # ------------------------------------------------------------ norms
    def rmsnorm_weight_grad(self, dy: Tensor, x: Tensor, rstd: Tensor) -> Tensor:
        """dy, x f32 (N, C), rstd (N,) -> dw f32 (C,) (two deterministic passes)."""
        N, C = x.shape
        if dy.shape != x.shape or rstd.shape != (N,):
            raise ValueError(f"rmsnorm_weight_grad shapes dy {dy.shape} x {x.shape} rstd {rstd.shape}")
        chunks = max(1, -(-N // _NORM_ROWS))
        part = self.ctx.alloc((chunks, C), "float32")
        dw = self.ctx.alloc((C,), "float32")
        params = pack_params("uuu", N, C, chunks)
        self._launch("rmsnorm_weight_grad", "partial", [dy, x, rstd, part], params,
                     grid_for(-(-chunks * C // _EW)))
        self._launch("rmsnorm_weight_grad_finish", "main", [part, dw], params,
                     grid_for(-(-C // _EW)))
        return dw

    # ------------------------------------------------------------ embedding
    def embedding_backward(self, ids: np.ndarray, dy: Tensor, vocab_size: int) -> Tensor:
        """Host ids int (N,), dy f32 (N, D) -> dE f32 (V, D); CSR of positions built on the host.
        Raises IndexError for ids outside [0, vocab_size)."""
        ids = np.asarray(ids).reshape(-1)
        if dy.shape[0] != ids.size:
            raise ValueError(f"embedding_backward: {ids.size} ids but dy has {dy.shape[0]} rows")
        row_ptr, pos = rt.token_csr(ids, vocab_size)
        D = dy.shape[1]
        de = self.ctx.alloc((vocab_size, D), "float32")
        rp, ps = self.ctx.upload(row_ptr, "int32"), self.ctx.upload(pos, "int32")
        self._launch("embedding_backward", "main", [rp, ps, dy, de],
                     pack_params("uu", vocab_size * D, D), grid_for(-(-vocab_size * D // _EW)))
        return de
