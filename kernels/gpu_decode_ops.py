"""GpuDecodeOps: the decode (KV-cache) ops of kernels/reference.py on wgpu, for kernels/generate.py.

Works with a GpuBackend instance through kernels/device.py (its Context, Tensors, dispatch), as
kernels/gpu_train_ops.py does; GpuBackend itself is not changed. Shaders: wgsl/rope_at.wgsl,
wgsl/kv_append.wgsl, wgsl/attention_decode.wgsl. Like every GpuBackend op these are only
encoded; reading a result (`backend.numpy`) submits and waits.

Limits: attention_decode keeps the L scores of a head in workgroup memory, so L <= 4096
(bitnet-b1.58-2B-4T's max_position_embeddings) and head_dim <= 256.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels import reference as ref
from bitswarm.kernels.device import Tensor, grid_for, pack_params
from bitswarm.kernels.gpu_backend import GpuBackend
from bitswarm.kernels.registry import shader_source

F32 = np.float32
DECODE_LMAX = 4096   # LMAX in attention_decode.wgsl
DECODE_HDMAX = 256   # HDMAX in attention_decode.wgsl
_EW = 256            # invocations per workgroup of the elementwise shaders


class GpuDecodeOps:
    """rope_at, kv_append_, attention_decode (semantics: kernels/reference.py) on a GpuBackend.

    Raises ValueError for shapes that do not fit (message names the op and the shapes).
    """

    def __init__(self, backend: GpuBackend) -> None:
        self.be = backend
        self.ctx = backend.ctx
        self._tables: dict[tuple[int, float], tuple[int, Tensor, Tensor]] = {}

    def _launch(self, shader: str, bindings, params: bytes, grid) -> None:
        k = self.ctx.kernel(shader, lambda: shader_source(f"{shader}.wgsl"), "main")
        self.ctx.dispatch(k, bindings, params, grid)

    def _rope_tables(self, rows: int, hd: int, theta: float) -> tuple[Tensor, Tensor]:
        key = (hd, float(theta))
        hit = self._tables.get(key)
        if hit is None or hit[0] < rows:
            # grow geometrically: decode asks for one more row per token
            n = max(rows, 128, 0 if hit is None else 2 * hit[0])
            cos, sin = ref.rope_tables(n, hd, theta)
            hit = self._tables[key] = (n, self.ctx.upload(cos, "float32"),
                                       self.ctx.upload(sin, "float32"))
        return hit[1], hit[2]

    def rope_at(self, x: Tensor, pos: int, H: int, hd: int, theta: float) -> Tensor:
        """x f32 (M, H*hd) at positions pos .. pos+M-1 -> rotated copy (reference.rope_at)."""
        M = x.shape[0]
        if x.shape != (M, H * hd) or hd % 2 or pos < 0:
            raise ValueError(f"rope_at: x {x.shape} incompatible with H={H} hd={hd} pos={pos}")
        cos, sin = self._rope_tables(pos + M, hd, theta)
        y = self.ctx.alloc(x.shape, "float32")
        total = M * H * (hd // 2)
        self._launch("rope_at", [x, cos, sin, y], pack_params("uuuu", total, pos, H, hd),
                     grid_for(-(-total // _EW)))
        return y

    def kv_append_(self, cache: Tensor, x: Tensor, pos: int) -> None:
        """In place: rows pos .. pos+M-1 of cache f32 (Lmax, C) = x f32 (M, C)."""
        if (len(cache.shape) != 2 or len(x.shape) != 2 or x.shape[1] != cache.shape[1]
                or pos < 0 or pos + x.shape[0] > cache.shape[0]):
            raise ValueError(f"kv_append_: {x.shape} at row {pos} does not fit cache {cache.shape}")
        total = x.shape[0] * x.shape[1]
        self._launch("kv_append", [x, cache], pack_params("uu", total, pos * cache.shape[1]),
                     grid_for(-(-total // _EW)))

    def attention_decode(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, L: int, Hq: int,
                         Hkv: int, hd: int) -> Tensor:
        """q f32 (1, Hq*hd) over the first L rows of k/v caches (>= L, Hkv*hd) -> o (1, Hq*hd)."""
        if Hkv <= 0 or Hq % Hkv:
            raise ValueError(f"attention_decode: Hq={Hq} not a multiple of Hkv={Hkv}")
        if not 1 <= L <= min(k_cache.shape[0], DECODE_LMAX):
            raise ValueError(f"attention_decode: L={L} outside 1..{min(k_cache.shape[0], DECODE_LMAX)}"
                             f" (cache rows {k_cache.shape[0]}, kernel limit {DECODE_LMAX})")
        if hd > DECODE_HDMAX:
            raise ValueError(f"attention_decode: head_dim={hd} over the kernel's limit {DECODE_HDMAX}")
        if q.shape != (1, Hq * hd) or k_cache.shape[1:] != (Hkv * hd,) or v_cache.shape != k_cache.shape:
            raise ValueError(f"attention_decode: q {q.shape} k {k_cache.shape} v {v_cache.shape} for "
                             f"Hq={Hq} Hkv={Hkv} hd={hd}")
        o = self.ctx.alloc(q.shape, "float32")
        self._launch("attention_decode", [q, k_cache, v_cache, o],
                     pack_params("uuuuf", L, Hq, Hkv, hd, F32(1.0 / np.sqrt(hd))), (Hq, 1, 1))
        return o
