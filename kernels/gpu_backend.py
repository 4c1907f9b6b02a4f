"""GpuBackend: the `Backend` op vocabulary on wgpu (kernels/backend.py for the protocol).

This module holds only what is not an op: transfers (tensor, ternary uploads, tables, numpy),
allocation and the one launch path (kernels/ops/registry.py). Each op is its family's GPU
launcher (kernels/ops/<family>/gpu.py), bound here as a method; tests/kernels/ops/ checks each
against its family's NumPy reference. Tensors are `device.Tensor` handles: float32 and int32 as
uploaded; `quantize_act` returns int8 activations packed 4 per u32. Frozen projections
(`ternary`) stay 2-bit packed in GPU memory, 16 weights per u32; projections that read one
input (`ternary_group`: q/k/v) share one buffer and run as one GEMM (`bitlinear_group`).
Embedding / lm_head tables are float16, on the GPU or (table_residency "host") in host memory,
streamed through the GPU per use.

Ops are only encoded; `numpy()` submits the pending work and waits for it.

Limits: every tensor must fit one storage binding (128 MiB on lavapipe, 2047 MiB on an H200);
grids allow up to 65535^2 workgroups (rows / elements are split over x and y); per-op limits
are in each family's gpu.py.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from bitswarm.kernels.backend import GPU_CAPS, check_assign
from bitswarm.kernels.config import TernaryLinear
from bitswarm.kernels.device import Context, Tensor, describe_adapter, is_cpu_adapter
from bitswarm.kernels.ops import registry
from bitswarm.kernels.ops.adamw import gpu as _adamw
from bitswarm.kernels.ops.attention import gpu as _attention
from bitswarm.kernels.ops.bitlinear import gpu as _bitlinear
from bitswarm.kernels.ops.bitlinear import train_gpu as _bitlinear_train
from bitswarm.kernels.ops.bitlinear.gpu import BITLINEAR_KW, GpuTernary, pack_codes_2bit
from bitswarm.kernels.ops.elementwise import gpu as _elementwise
from bitswarm.kernels.ops.embedding import gpu as _embedding
from bitswarm.kernels.ops.lm_head import gpu as _lm_head
from bitswarm.kernels.ops.lm_head.host_table import HostTable
from bitswarm.kernels.ops.matmul import gpu as _matmul
from bitswarm.kernels.ops.rmsnorm import gpu as _rmsnorm
from bitswarm.kernels.ops.rope import gpu as _rope
from bitswarm.kernels.ops.rope.reference import RopeTables

log = logging.getLogger("bitswarm.kernels.gpu_backend")
F32 = np.float32
_HOST_COPY_MAX = 1 << 20  # integer uploads up to this many elements keep a host copy (ids)
TABLE_RESIDENCIES = ("gpu", "host")
RUNTIME_NAMES = {"wgpu": "wgpu-native", "dawn": "Dawn"}     # for the node's log


class GpuBackend:
    """wgpu backend. `GpuBackend(ctx)` shares a device Context; default: a new one (raises
    RuntimeError when wgpu has no adapter).

    table_residency: "gpu" keeps embedding / lm_head tables in GPU memory (float16); "host"
    keeps them in host memory (`HostTable`) and streams them through the GPU per use — the
    largest single saving for big-vocabulary models (626 MiB at 2B-4T). Raises ValueError for
    anything else.

    ste: the STE input gradient's arithmetic, "f32", "f16", "i16", "i8" or "auto" (None: the
    environment variable BITSWARM_GPU_STE, default "auto" = f16 only on adapters where it
    measured faster, else f32); f16 needs the shader-f16 feature and falls back to f32 without
    it; i16 / i8 quantize dy per row to 15 / 8 bits for int8 dot products
    (kernels/ops/bitlinear/gpu.py ste_precision). Raises ValueError for another value.

    runtime: the WebGPU implementation of a new Context, "auto", "wgpu" or "dawn" (None:
    BITSWARM_GPU_RUNTIME, default auto; kernels/device/runtime.py)."""

    name = "gpu"
    caps = GPU_CAPS

    @property
    def device_info(self) -> str:
        """The WebGPU adapter and runtime (wgpu-native or Dawn) in one line (for the node's
        log), with the STE gradient's arithmetic."""
        return (f"WebGPU adapter {describe_adapter(self.ctx.info)} via {RUNTIME_NAMES[self.ctx.runtime]}; "
                f"STE input gradient {self.ste_precision}")

    @property
    def device_memory(self) -> int | None:
        """Bytes of a discrete GPU's own memory where the runtime reports it (Dawn), else None
        (kernels/device/runtime.py device_memory); sets recompute auto's default budget."""
        return getattr(self.ctx, "device_memory", None)

    @property
    def device_warning(self) -> str | None:
        """Why this device is slow, when it is a CPU rasterizer; else None."""
        if not is_cpu_adapter(self.ctx.info):
            return None
        return ("this adapter is a CPU rasterizer: the WGSL kernels run on the CPU, several "
                "times slower than the NumPy backend (--device cpu)")

    def __init__(self, ctx: Context | None = None, table_residency: str = "gpu",
                 ste: str | None = None, runtime: str | None = None) -> None:
        if table_residency not in TABLE_RESIDENCIES:
            raise ValueError(f"table residency must be one of {TABLE_RESIDENCIES}, "
                             f"got {table_residency!r}")
        self.table_residency = table_residency
        self.ctx = ctx or Context(runtime=runtime)
        # Split-K slab count of the bitlinear forward: None = heuristic (bitlinear_plan),
        # an int forces it (1 = unsplit; clamped to the number of K steps). For
        # benchmarks/kernels.py --bitlinear-splits and tests; results are bit-identical.
        self.bitlinear_splits: int | None = None
        # bitlinear.wgsl's K step in activation words: 16 (64 int8) or 32 (128 int8, half the
        # barriers); same results, only speed differs. For benchmarks/kernels.py --bitlinear-kw.
        self.bitlinear_kw: int = BITLINEAR_KW
        # bitlinear.wgsl's output rows per tile: None = heuristic (bitlinear_tile8, then
        # bitlinear_tile_rows), 128 (128 x 128 tiles, entries main8 / main3_8), 64 or 32
        # forces; same results, only speed differs. For benchmarks/kernels.py --bitlinear-tm.
        self.bitlinear_tm: int | None = None
        # The forward on int8 tensor cores (bitlinear_tc.wgsl; Dawn with an i8 16x16x32
        # subgroup matrix configuration): None = where it measured faster (bitlinear_tc_ok),
        # False never, True wherever the device and K allow; bit-identical either way.
        # BITSWARM_GPU_TC=0 sets False (benchmarks' A/B runs).
        tc_off = os.environ.get("BITSWARM_GPU_TC", "").strip() == "0"
        self.bitlinear_tc: bool | None = False if tc_off else None
        # The int STE input gradient (i8 / i16) on the same tensor cores
        # (bitlinear_backward_tc_*.wgsl): None = where it measured faster (ste_tc_ok), False
        # never, True wherever the device and OUT allow; the same int32 sums either way.
        # BITSWARM_GPU_TC=0 or BITSWARM_GPU_STE_TC=0 sets False, BITSWARM_GPU_STE_TC=1 True.
        ste_env = os.environ.get("BITSWARM_GPU_STE_TC", "").strip()
        self.ste_tc: bool | None = (False if tc_off or ste_env == "0"
                                    else True if ste_env == "1" else None)
        # STE input gradient tile edge: None = heuristic (bitlinear_backward_tile), 64 or 128
        # forces; same sums in the same order, only speed differs.
        self.bitlinear_bwd_tile: int | None = None
        # STE input gradient arithmetic: "f32" (bitlinear_backward.wgsl, the reference path) or
        # "f16" (packed-f16 partial sums, bitlinear_backward_f16.wgsl), resolved from
        # `ste` / BITSWARM_GPU_STE (f32|f16|auto) and the adapter (_bitlinear.ste_precision).
        self.ste_precision: str = _bitlinear.ste_precision(ste, self.ctx.features, self.ctx.info)
        # o terms per f16 partial sum of the f16 path (16, 32 or 64; same error bound form)
        self.ste_chunk: int = _bitlinear.STE_F16_CHUNK
        # f16 path: decode codes by integer compares and selects (True) or conversions (False);
        # the same values, only speed differs (bitlinear_backward_f16.wgsl SELECT_DECODE)
        self.ste_select_decode: bool = _bitlinear.STE_F16_SELECT_DECODE
        # int STE slabs over OUT (None: ste_int_plan's rule; an int forces it)
        self.ste_int_splits: int | None = None
        # LoRA's rank-r matmul shapes on kernels/ops/matmul/skinny_*.wgsl (True) or on the
        # tiled matmul.wgsl (False, for A/B runs); the same products within fp32 rounding.
        self.matmul_skinny: bool = True
        # tiled matmul output tile edge (matmul.wgsl main 64 / main8 128; the lm_head's two
        # matmuls per vocab chunk too): None = heuristic (matmul_tile), 64 or 128 forces; the
        # same sums in the same order, only speed differs.
        self.matmul_tile: int | None = None
        # main8's k per step (8 or 16) and f16 b tiles read a word (two elements) at a time
        # (matmul.wgsl B_PAIRS): the same bits either way, only speed differs (A/B runs)
        self.matmul_ks8: int = _matmul.MATMUL_KS8
        self.matmul_f16_pairs: bool = _matmul.MATMUL_F16_PAIRS
        # lm_head_cross_entropy: widen each f16 table chunk to f32 where its logits run on
        # 128 x 128 tiles (exact: the same bits; True) or read the f16 rows there (False)
        self.lm_head_widen: bool = True
        self._rope = RopeTables(lambda a: self.ctx.upload(a, "float32"))
        self._dummy_t: Tensor | None = None
        # AdamW's (bc1, bc2) tensor and the values it holds (kernels/ops/adamw/gpu.py)
        self._adamw_bc: Tensor | None = None
        self._adamw_bc_values: np.ndarray | None = None

    # ------------------------------------------------------------ transfers
    def tensor(self, a: np.ndarray) -> Tensor:
        """Upload: integer arrays become int32 (int8 arrays stay int8, packed, as quantize_act
        output), everything else float32."""
        a = np.asarray(a)
        if a.dtype == np.int8 and a.ndim == 2:
            return self.ctx.upload(a, "int8")
        if a.dtype.kind in "iub":
            t = self.ctx.upload(a, "int32")
            if a.size:
                t.host_min, t.host_max = int(a.min()), int(a.max())
            if a.size <= _HOST_COPY_MAX:
                t.host = np.array(a, dtype=np.int32)
            return t
        return self.ctx.upload(a, "float32")

    def assign(self, t: Tensor, a: np.ndarray) -> None:
        """Overwrite float32 tensor t with host array a (same shape) in place: t keeps its
        buffer, so the bind groups naming it stay cached (a new upload per round rebuilt
        every LoRA dispatch's bind group in the round's first step). In queue order: work
        already recorded reads the old values."""
        check_assign(t.shape, t.dtype == "float32", a)
        self.ctx.write(t, np.ascontiguousarray(a, dtype=np.float32))

    def ternary(self, w: TernaryLinear) -> GpuTernary:
        return self.ternary_group([w])[0]

    def ternary_group(self, ws: list[TernaryLinear]) -> list[GpuTernary]:
        """Projections that read the same input (q/k/v, gate/up) uploaded into one packed
        buffer, rows back to back, so `bitlinear_group` runs them as one GEMM. Same bytes as
        separate uploads; raises ValueError when their input widths differ."""
        if len({w.codes.shape[1] for w in ws}) != 1:
            raise ValueError(f"ternary_group: input widths differ: {[w.codes.shape for w in ws]}")
        t = self.ctx.upload(np.concatenate([self._packed(w.codes) for w in ws]), "int32")
        out, row0 = [], 0
        for w in ws:
            o, k = w.codes.shape
            out.append(GpuTernary(t, o, k, F32(w.weight_scale), row0))
            row0 += o
        return out

    def _packed(self, codes: np.ndarray) -> np.ndarray:
        """pack_codes_2bit(codes) as int32 words, as uploaded (benchmarks memoize it)."""
        return pack_codes_2bit(codes).view(np.int32)

    def table(self, a: np.ndarray) -> Tensor | HostTable:
        """An embedding / lm_head table (V, D) in float16 storage (half the bytes; every op that
        reads it computes in float32), on the GPU or, with table_residency "host", as a
        `HostTable`. Values are rounded to nearest even; a table with a finite value beyond
        float16's range (|x| > 65504) stays float32 instead (logged). float16 is read with
        WGSL's core unpack2x16float, so no adapter feature is needed."""
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 2:
            raise ValueError(f"table must be 2-D (V, D), got shape {a.shape}")
        dtype = "float16"
        if a.size and float(np.max(np.abs(a))) > float(np.finfo(np.float16).max):
            log.warning("table %s has values beyond float16 range: kept float32", a.shape)
            dtype = "float32"
        if self.table_residency == "host":
            return HostTable(np.ascontiguousarray(a, dtype=np.float16 if dtype == "float16"
                                                  else np.float32))
        return self.ctx.upload(a, dtype)

    def release_workspace(self) -> None:
        """Give the free pool's buffers back to the driver (between phases of a step whose
        temporaries change size, so the pool does not keep the union of all of them)."""
        self.ctx.release()

    def batch_parts(self, B: int, T: int) -> list[tuple[int, int]]:
        """[(0, B)]: one queue, so the whole batch is one part (larger dispatches)."""
        return [(0, B)]

    @staticmethod
    def run_parts(fns: list) -> list:
        return [fn() for fn in fns]

    def numpy(self, t: Tensor) -> np.ndarray:
        return self.ctx.read(t)

    def numpy_many(self, ts: list[Tensor]) -> list[np.ndarray]:
        """[numpy(t) for t in ts] with one GPU round trip (Context.read_many)."""
        return self.ctx.read_many(list(ts))

    def zeros_like(self, t: Tensor) -> Tensor:
        z = self.ctx.alloc(t.shape, t.dtype)
        self.ctx.clear(z)
        return z

    # ------------------------------------------------------------ for the launchers
    def _new(self, shape, dtype: str = "float32") -> Tensor:
        return self.ctx.alloc(shape, dtype)

    def _launch(self, op: str, bindings, grid, params: dict | None, name: str | None = None,
                constants: dict | None = None) -> None:
        registry.launch(self.ctx, op, bindings, grid, params, name, constants)

    _ew_grid = staticmethod(registry.ew_grid)

    def _dummy(self) -> Tensor:
        """A 4-float tensor bound where a shader needs a buffer it will not use."""
        if self._dummy_t is None:
            self._dummy_t = self._new((4,))
        return self._dummy_t

    # ------------------------------------------------------------ the ops (kernels/ops/)
    embedding = _embedding.embedding
    embedding_backward = _embedding.embedding_backward
    rmsnorm = _rmsnorm.rmsnorm
    rmsnorm_backward = _rmsnorm.rmsnorm_backward
    rmsnorm_weight_grad = _rmsnorm.rmsnorm_weight_grad
    quantize_act = _bitlinear.quantize_act
    bitlinear_tile_rows = _bitlinear.bitlinear_tile_rows
    bitlinear_plan = _bitlinear.bitlinear_plan
    bitlinear = _bitlinear.bitlinear
    bitlinear_int = _bitlinear.bitlinear_int
    bitlinear_group = _bitlinear.bitlinear_group
    bitlinear_backward = _bitlinear.bitlinear_backward
    bitlinear_backward_tile = _bitlinear.bitlinear_backward_tile
    bitlinear_backward_f16 = _bitlinear.bitlinear_backward_f16
    bitlinear_backward_int = _bitlinear.bitlinear_backward_int
    ternarize_all = _bitlinear_train.ternarize_all
    dequantize_act = _bitlinear_train.dequantize_act
    matmul = _matmul.matmul
    matmul_tile_for = _matmul.matmul_tile
    widen = _matmul.widen
    add = _elementwise.add
    relu2_gate = _elementwise.relu2_gate
    relu2_gate_backward = _elementwise.relu2_gate_backward
    rope = _rope.rope
    rope_at = _rope.rope_at
    attention = _attention.attention
    attention_backward = _attention.attention_backward
    attention_decode = _attention.attention_decode
    kv_append_ = _attention.kv_append_
    cross_entropy = _lm_head.cross_entropy
    lm_head_cross_entropy = _lm_head.lm_head_cross_entropy
    adamw_ = _adamw.adamw_
