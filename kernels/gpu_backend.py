"""GpuBackend: the `Backend` op vocabulary on wgpu, one WGSL shader per op.

Semantics are exactly those of kernels/reference.py (see kernels/backend.py for the protocol);
tests/kernels/test_ops_gpu.py checks every op against it. Tensors are `device.Tensor` handles:
float32 and int32 as uploaded; `quantize_act` returns int8 activations packed 4 per u32.
Frozen projections (`ternary`) stay 2-bit packed in GPU memory, 16 weights per u32; projections
that read one input (`ternary_group`: q/k/v) share one buffer and run as one GEMM
(`bitlinear_group`). Embedding / lm_head tables are float16, on the GPU or (table_residency
"host") in host memory, streamed through the GPU per use.

Ops are only encoded; `numpy()` submits the pending work and waits for it.

Limits: attention needs head_dim <= 256 (output rows live in registers, ceil(hd/64) vec4 per
invocation; any T; GQA backward takes two (N, Hq*hd) temporaries); every tensor must fit one
storage binding (128 MiB on lavapipe, 2047 MiB on an H200); grids allow up to 65535^2
workgroups (rows / elements are split over x and y).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bitswarm.kernels import reference as ref
from bitswarm.kernels import registry
from bitswarm.kernels.config import TernaryLinear
from bitswarm.kernels.device import Context, Tensor, grid_for, pack_params, tensor_nbytes

log = logging.getLogger("bitswarm.kernels.gpu_backend")
F32 = np.float32
ATTN_HDMAX = 256
_EW = 256          # invocations per workgroup of the elementwise shaders
_MATMUL_MIN_WGS = 256     # split-K target: workgroups to keep a big GPU busy
_MATMUL_MIN_KCHUNK = 256  # split-K: at least this much of K per workgroup
_HOST_COPY_MAX = 1 << 20  # integer uploads up to this many elements keep a host copy (ids)
# bitlinear split-K heuristic: split when the output tiles are fewer than _BITLINEAR_MIN_WGS,
# each slab summing >= _BITLINEAR_MIN_K of K. Off by default (0): on an H200 at N = 512 every
# 2B-4T shape was fastest unsplit (k/v 0.074 ms unsplit vs 0.127 ms in 2 slabs, q/o 0.202 vs
# 0.257: the extra reduce dispatch and the int32 slab traffic cost more than the fuller GPU
# gains; benchmarks/results/kernels-h200.json, group "W1.58A8 GEMM split-K"). Forced counts
# (`bitlinear_splits`) stay available for other GPUs and the benchmark sweep.
_BITLINEAR_MIN_WGS = 0
_BITLINEAR_MIN_K = 512
_BITLINEAR_KW = 16        # bitlinear.wgsl activation words per K step (16 or 32; see shader)
# bitlinear tile rows: 32-row tiles (twice the workgroups) when the 64x64 tiles are fewer than
# this. Off by default (0): on an H200 32-row tiles gained nothing where they were meant to
# (2B-4T k/v: 0.073 ms either way, 29% of peak; 1b k/v 14.3% vs 13.8%) and lost elsewhere
# (down 43.7% vs 47.0%); benchmarks/results/kernels-h200-tm.json. Forced via `bitlinear_tm`.
_BITLINEAR_TM32_BELOW = 0


@dataclass
class GpuTernary:
    """A frozen W1.58 projection on the GPU: codes (out, in) 2-bit packed, code+1 per field,
    16 per u32 (row stride ceil(in/16) words, padding = zero weights), and weight_scale (f32)."""

    packed: Tensor
    out_features: int
    in_features: int
    weight_scale: np.float32
    row0: int = 0          # first row in `packed` (projections of a `ternary_group` share it)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)


@dataclass
class HostTable:
    """An embedding / lm_head table (V, D) kept in host memory (`table_residency="host"`).

    `data` is float16 (or float32 when a value is beyond float16's range), the same values the
    GPU-resident table holds. The embedding gather runs on the host (N rows uploaded per step);
    `lm_head_cross_entropy` streams the table through one chunk buffer on the GPU, so a
    128256 x 2560 table costs 8192 x 2560 x 2 B = 40 MiB of GPU memory instead of 626 MiB, for
    V x D x 2 B of host-to-GPU upload per call. (QVAC Fabric keeps embeddings in host memory
    too: shared/FACTS.md.)"""

    data: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def dtype(self) -> str:
        return "float16" if self.data.dtype == np.float16 else "float32"


TABLE_RESIDENCIES = ("gpu", "host")


def pack_ternary(codes: np.ndarray) -> np.ndarray:
    """int8 codes (out, in) in {-1, 0, 1} -> uint32 (out, ceil(in/16)), field i of word j is
    element 16j+i at bits 2i, stored as code+1. Raises ValueError for other values."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"ternary codes must be 2-D (out, in), got shape {codes.shape}")
    if codes.size and (codes.min() < -1 or codes.max() > 1):
        raise ValueError("ternary codes must be in {-1, 0, 1}")
    out, k = codes.shape
    k16 = (k + 15) // 16
    f = np.ones((out, k16 * 16), np.uint32)
    f[:, :k] = codes.astype(np.int32) + 1
    f = f.reshape(out, k16, 16)
    shifts = (2 * np.arange(16, dtype=np.uint32))
    return np.bitwise_or.reduce(f << shifts, axis=-1).astype(np.uint32)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


class GpuBackend:
    """wgpu backend. `GpuBackend(ctx)` shares a device Context; default: a new one (raises
    RuntimeError when wgpu has no adapter).

    table_residency: "gpu" keeps embedding / lm_head tables in GPU memory (float16); "host"
    keeps them in host memory (`HostTable`) and streams them through the GPU per use — the
    largest single saving for big-vocabulary models (626 MiB at 2B-4T). Raises ValueError for
    anything else."""

    name = "gpu"

    def __init__(self, ctx: Context | None = None, table_residency: str = "gpu") -> None:
        if table_residency not in TABLE_RESIDENCIES:
            raise ValueError(f"table residency must be one of {TABLE_RESIDENCIES}, "
                             f"got {table_residency!r}")
        self.table_residency = table_residency
        self.ctx = ctx or Context()
        # Split-K slab count of the bitlinear forward: None = heuristic (bitlinear_plan),
        # an int forces it (1 = unsplit; clamped to the number of K steps). For
        # benchmarks/kernels.py --bitlinear-splits and tests; results are bit-identical.
        self.bitlinear_splits: int | None = None
        # bitlinear.wgsl's K step in activation words: 16 (64 int8) or 32 (128 int8, half the
        # barriers); same results, only speed differs. For benchmarks/kernels.py --bitlinear-kw.
        self.bitlinear_kw: int = _BITLINEAR_KW
        # bitlinear.wgsl's output rows per tile: None = heuristic (bitlinear_tile_rows), 64 or
        # 32 forces; same results, only speed differs. For benchmarks/kernels.py --bitlinear-tm.
        self.bitlinear_tm: int | None = None
        self._rope_cache: dict[tuple[int, float], tuple[int, Tensor, Tensor]] = {}

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

    def ternary(self, w: TernaryLinear) -> GpuTernary:
        return self.ternary_group([w])[0]

    def ternary_group(self, ws: list[TernaryLinear]) -> list[GpuTernary]:
        """Projections that read the same input (q/k/v, gate/up) uploaded into one packed
        buffer, rows back to back, so `bitlinear_group` runs them as one GEMM. Same bytes as
        separate uploads; raises ValueError when their input widths differ."""
        _check(len({w.codes.shape[1] for w in ws}) == 1,
               f"ternary_group: input widths differ: {[w.codes.shape for w in ws]}")
        t = self.ctx.upload(np.concatenate([self._packed(w.codes) for w in ws]), "int32")
        out, row0 = [], 0
        for w in ws:
            o, k = w.codes.shape
            out.append(GpuTernary(t, o, k, F32(w.weight_scale), row0))
            row0 += o
        return out

    def _packed(self, codes: np.ndarray) -> np.ndarray:
        """pack_ternary(codes) as int32 words, as uploaded (benchmarks memoize it)."""
        return pack_ternary(codes).view(np.int32)

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

    def numpy(self, t: Tensor) -> np.ndarray:
        return self.ctx.read(t)

    def zeros_like(self, t: Tensor) -> Tensor:
        z = self.ctx.alloc(t.shape, t.dtype)
        self.ctx.clear(z)
        return z

    def _new(self, shape, dtype: str = "float32") -> Tensor:
        return self.ctx.alloc(shape, dtype)

    def _launch(self, op: str, bindings, params: bytes, grid, entry: str | None = None,
                constants: dict | None = None) -> None:
        k = registry.kernel(self.ctx, op, entry, constants)
        self.ctx.dispatch(k, bindings, params, grid)

    def _ew_grid(self, total: int):
        return grid_for(-(-total // _EW))

    # ------------------------------------------------------------ embedding / norms
    def embedding(self, ids: Tensor, table: Tensor | HostTable) -> Tensor:
        _check(len(table.shape) == 2, f"embedding table must be (V, D), got {table.shape}")
        _check(ids.dtype == "int32" and len(ids.shape) == 1, f"ids must be int32 (N,), got {ids}")
        V, D = table.shape
        if ids.host_max is not None and (ids.host_max >= V or ids.host_min < -V):
            raise IndexError(f"token id out of range for vocab size {V} "
                             f"(ids span {ids.host_min}..{ids.host_max})")
        if isinstance(table, HostTable):
            # The gather is an exact copy (f16 -> f32 widening), as the GPU kernel does.
            _check(ids.host is not None, "embedding from a host table needs ids uploaded by "
                   "GpuBackend.tensor (host copy kept)")
            return self.ctx.upload(table.data[ids.host].astype(np.float32), "float32")
        _check(table.dtype in ("float32", "float16"), f"embedding table dtype {table.dtype}")
        N = ids.shape[0]
        out = self._new((N, D))
        self._launch("embedding", [ids, table, out], pack_params("uuu", N * D, D, V),
                     self._ew_grid(N * D), constants={"F16": int(table.dtype == "float16")})
        return out

    def rmsnorm(self, x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        N, C = x.shape
        _check(w.shape == (C,), f"rmsnorm weight {w.shape} does not match x {x.shape}")
        y, rstd = self._new((N, C)), self._new((N,))
        self._launch("rmsnorm", [x, w, y, rstd], pack_params("uuf", N, C, F32(eps)), grid_for(N))
        return y, rstd

    def rmsnorm_backward(self, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor) -> Tensor:
        N, C = x.shape
        _check(dy.shape == x.shape and w.shape == (C,) and rstd.shape == (N,),
               f"rmsnorm_backward shapes dy {dy.shape} x {x.shape} w {w.shape} rstd {rstd.shape}")
        dx = self._new((N, C))
        self._launch("rmsnorm_backward", [dy, x, w, rstd, dx], pack_params("uuf", N, C, 0.0),
                     grid_for(N))
        return dx

    # ------------------------------------------------------------ W1.58A8
    def quantize_act(self, x: Tensor) -> tuple[Tensor, Tensor]:
        N, C = x.shape
        xq, xs = self._new((N, C), "int8"), self._new((N,))
        self._launch("quantize_act", [x, xq, xs], pack_params("uuu", N, C, (C + 3) // 4),
                     grid_for(N))
        return xq, xs

    def bitlinear_tile_rows(self, N: int, OUT: int) -> int:
        """Output rows per bitlinear workgroup tile (64 or 32): the forced `bitlinear_tm`, else
        32 when the 64x64 tiles are fewer than _BITLINEAR_TM32_BELOW (too few to fill the GPU)."""
        if self.bitlinear_tm is not None:
            _check(self.bitlinear_tm in (32, 64),
                   f"bitlinear_tm must be 32 or 64, got {self.bitlinear_tm}")
            return int(self.bitlinear_tm)
        return 32 if -(-OUT // 64) * -(-N // 64) < _BITLINEAR_TM32_BELOW else 64

    def bitlinear_plan(self, N: int, K: int, OUT: int) -> tuple[int, int]:
        """(slabs, K steps per slab) the bitlinear forward uses for (N, K) x (OUT, K)^T: the
        forced `bitlinear_splits` or the heuristic (_BITLINEAR_MIN_WGS), clamped to the number
        of K steps (4 * bitlinear_kw int8 each), without empty slabs; 1 if the int32 slabs
        would exceed a storage binding."""
        nsteps = max(1, -(-K // (4 * self.bitlinear_kw)))    # the kernel's K steps
        if self.bitlinear_splits is not None:
            splits = max(1, int(self.bitlinear_splits))
        else:
            tiles = -(-OUT // 64) * -(-N // self.bitlinear_tile_rows(N, OUT))
            splits = min(-(-_BITLINEAR_MIN_WGS // tiles), K // _BITLINEAR_MIN_K)
        splits = max(1, min(splits, nsteps))
        spz = -(-nsteps // splits)
        splits = -(-nsteps // spz)                 # no empty slabs
        if splits * N * OUT * 4 > self.ctx.max_binding:
            return 1, nsteps
        return splits, spz

    def _bitlinear(self, xq: Tensor, x_scale: Tensor, w: GpuTernary, int_out: bool) -> Tensor:
        _check(xq.dtype == "int8", f"bitlinear needs int8 activations (quantize_act), got {xq}")
        N, K = xq.shape
        _check(K == w.in_features, f"bitlinear: x has {K} features, weight expects {w.in_features}")
        _check(x_scale.shape == (N,), f"bitlinear: x_scale {x_scale.shape} for {N} rows")
        OUT = w.out_features
        op = "bitlinear_int" if int_out else "bitlinear"
        y = self._new((N, OUT), "int32" if int_out else "float32")
        k4, k16 = (K + 3) // 4, (K + 15) // 16
        splits, spz = self.bitlinear_plan(N, K, OUT)
        kw = self.bitlinear_kw
        _check(kw in (16, 32), f"bitlinear_kw must be 16 or 32, got {kw}")
        tm = self.bitlinear_tile_rows(N, OUT)
        # o1 = o2 = OUT: one output segment (main3's fields, unused by main)
        params = pack_params("uuuufuuuuff", N, OUT, k4, k16, w.weight_scale, spz, w.row0,
                             OUT, OUT, 1.0, 1.0)
        if splits >= 2:
            part = self._new((splits, N, OUT), "int32")
            self._launch(op, [xq, x_scale, w.packed, part], params,
                         (-(-OUT // 64), -(-N // tm), splits), entry="main",
                         constants={"INT_OUT": int(int_out), "SPLIT": 1, "KW": kw, "TM": tm})
            self._launch(op, [part, x_scale, y],
                         pack_params("uuuf", N, OUT, splits, w.weight_scale),
                         self._ew_grid(N * OUT), entry="reduce",
                         constants={"INT_OUT": int(int_out)})
            return y
        self._launch(op, [xq, x_scale, w.packed, y], params, (-(-OUT // 64), -(-N // tm), 1),
                     constants={"INT_OUT": int(int_out), "KW": kw, "TM": tm})
        return y

    def bitlinear_group(self, xq: Tensor, x_scale: Tensor, ws: list[GpuTernary]) -> list[Tensor]:
        """[bitlinear(xq, x_scale, w) for w in ws], bit-identical, as ONE GEMM (entry main3)
        when 2-3 projections of a `ternary_group` lie back to back in one packed buffer and
        the GEMM runs unsplit; otherwise one launch each. Shapes: xq int8 (N, K) -> a list of
        f32 (N, out_i)."""
        N, K = xq.shape
        fused = (2 <= len(ws) <= 3 and all(w.packed is ws[0].packed for w in ws)
                 and all(b.row0 == a.row0 + a.out_features for a, b in zip(ws, ws[1:])))
        OUT = sum(w.out_features for w in ws)
        if not fused or self.bitlinear_plan(N, K, OUT)[0] != 1:
            return [self.bitlinear(xq, x_scale, w) for w in ws]
        _check(xq.dtype == "int8" and all(w.in_features == K for w in ws)
               and x_scale.shape == (N,), f"bitlinear_group: xq {xq} x_scale {x_scale} for "
               f"weights {[w.shape for w in ws]}")
        ys = [self._new((N, w.out_features)) for w in ws]
        o1 = ws[0].out_features
        o2 = o1 + ws[1].out_features
        s2 = ws[2].weight_scale if len(ws) == 3 else F32(1.0)
        tm = self.bitlinear_tile_rows(N, OUT)
        _check(self.bitlinear_kw in (16, 32), f"bitlinear_kw must be 16 or 32, got {self.bitlinear_kw}")
        self._launch("bitlinear_group", [xq, x_scale, ws[0].packed, ys[0],
                                         ys[1], ys[2] if len(ws) == 3 else self._dummy()],
                     pack_params("uuuufuuuuff", N, OUT, (K + 3) // 4, (K + 15) // 16,
                                 ws[0].weight_scale, 1 << 30, ws[0].row0, o1, o2,
                                 ws[1].weight_scale, s2),
                     (-(-OUT // 64), -(-N // tm), 1),
                     constants={"KW": self.bitlinear_kw, "TM": tm})
        return ys

    def bitlinear(self, xq: Tensor, x_scale: Tensor, w: GpuTernary) -> Tensor:
        return self._bitlinear(xq, x_scale, w, False)

    def bitlinear_int(self, xq: Tensor, w: GpuTernary) -> Tensor:
        """The exact int32 core (N, out) = xq @ codes^T (reference.bitlinear_int); for tests."""
        dummy = self._new((xq.shape[0],))
        return self._bitlinear(xq, dummy, w, True)

    def bitlinear_backward(self, dy: Tensor, w: GpuTernary, acc: Tensor | None = None) -> Tensor:
        N, OUT = dy.shape
        _check(OUT == w.out_features, f"bitlinear_backward: dy {dy.shape} vs weight {w.shape}")
        K = w.in_features
        dx = self._new((N, K))
        if acc is not None:
            _check(acc.shape == (N, K), f"bitlinear_backward: acc {acc.shape} != {(N, K)}")
            self.ctx.copy(acc, dx)
        grid = (-(-K // 64), -(-N // 64), 1)
        self._launch("bitlinear_backward", [dy, w.packed, dx],
                     pack_params("uuuufu", N, OUT, K, (K + 15) // 16, w.weight_scale, w.row0),
                     grid,
                     constants={"ACC": int(acc is not None)})
        return dx

    # ------------------------------------------------------------ dense
    def matmul(self, a: Tensor, b: Tensor, *, trans_a: bool = False, trans_b: bool = False,
               alpha: float = 1.0, acc: Tensor | None = None) -> Tensor:
        _check(len(a.shape) == 2 and len(b.shape) == 2, f"matmul needs 2-D, got {a.shape} {b.shape}")
        if isinstance(b, HostTable):
            return self._matmul_host_table(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
                                           acc=acc)
        M, K = a.shape[::-1] if trans_a else a.shape
        K2, N = b.shape[::-1] if trans_b else b.shape
        _check(K == K2, f"matmul inner dims differ: op(a) {(M, K)} op(b) {(K2, N)}")
        _check(a.dtype == "float32" and b.dtype in ("float32", "float16"),
               f"matmul: a must be float32 and b float32 or float16, got {a.dtype} {b.dtype}")
        c = self._new((M, N))
        if acc is not None:
            _check(acc.shape == (M, N), f"matmul: acc {acc.shape} != {(M, N)}")
            self.ctx.copy(acc, c)
        tiles = -(-N // 64) * -(-M // 64)
        consts = {"TRANS_A": int(trans_a), "TRANS_B": int(trans_b), "ACC": int(acc is not None),
                  "B_F16": int(b.dtype == "float16")}
        # Skinny outputs (LoRA's r columns, A/B gradients) give few tiles: split K so the GPU
        # has >= ~256 workgroups, each summing >= 256 of K, then reduce the slabs in order.
        splits = min(-(-_MATMUL_MIN_WGS // tiles), K // _MATMUL_MIN_KCHUNK)
        if splits >= 2 and splits * M * N * 4 <= self.ctx.max_binding:
            kchunk = (-(-K // splits) + 15) // 16 * 16
            splits = -(-K // kchunk)
            part = self._new((splits, M, N))
            self._launch("matmul", [a, b, part],
                         pack_params("uuufuu", M, N, K, F32(alpha), kchunk, 0),
                         (-(-N // 64), -(-M // 64), splits), entry="main",
                         constants={**consts, "ACC": 0, "SPLIT": 1})
            self._launch("matmul", [part, c], pack_params("uuf", M * N, splits, F32(alpha)),
                         self._ew_grid(M * N), entry="reduce", constants={"ACC": consts["ACC"]})
            return c
        self._launch("matmul", [a, b, c], pack_params("uuufuu", M, N, K, F32(alpha), K, 0),
                     (-(-N // 64), -(-M // 64), 1), constants=consts)
        return c

    def _table_chunks(self, w: HostTable, rows: int):
        """Yield (v0, n, chunk) with table rows v0..v0+n copied into the first n rows of one
        reused (rows, D) GPU buffer, in encoder order (commands already encoded for the
        previous chunk read it before it is overwritten). Rows travel through a two-slot
        UploadRing, so the host writes chunk i+1 while the GPU works on chunk i. (A persistent
        mappable copy of the whole table would skip the host copy, but on an H200 the driver
        put it in device memory: benchmarks/results/driver_memory-h200-2b4t-host-mapped.json.)"""
        V, D = w.shape
        buf = self.ctx.alloc((rows, D), w.dtype)
        with self.ctx.upload_ring(tensor_nbytes((rows, D), w.dtype)) as ring:
            for v0 in range(0, V, rows):
                n = min(rows, V - v0)
                ring.copy(w.data[v0:v0 + n], buf)
                yield v0, n, buf

    def _table_rows(self, w: HostTable, n: int) -> int:
        """Rows per streamed chunk: LM_CHUNK, or fewer where a chunk must fit one binding."""
        per_row = tensor_nbytes((1, w.shape[1]), w.dtype)
        return max(1, min(ref.LM_CHUNK, w.shape[0], self.ctx.max_binding // max(per_row, 4 * n)))

    def _matmul_host_table(self, a: Tensor, w: HostTable, *, trans_a: bool, trans_b: bool,
                           alpha: float, acc: Tensor | None) -> Tensor:
        """a (M, D) @ w^T (D, V) -> (M, V) for a host-resident table (the lm_head logits of
        `forward` and of generation): the table streams through the GPU in row chunks, each
        chunk's logits are read back and the whole (M, V) is uploaded once. Other forms raise
        ValueError (training uses lm_head_cross_entropy, which never needs them)."""
        _check(trans_b and not trans_a and acc is None and a.shape[1] == w.shape[1],
               f"matmul with a host-resident table supports only a (M, D) @ table^T, got a "
               f"{a.shape} table {w.shape} trans_a={trans_a} trans_b={trans_b} acc={acc is not None}")
        parts = []
        for _, n, chunk in self._table_chunks(w, self._table_rows(w, a.shape[0])):
            parts.append(self.numpy(self.matmul(a, chunk, trans_b=True, alpha=alpha))[:, :n])
        return self.ctx.upload(np.concatenate(parts, axis=1), "float32")

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        _check(a.shape == b.shape, f"add shapes differ: {a.shape} {b.shape}")
        out = self._new(a.shape)
        self._launch("add", [a, b, out], pack_params("u", a.size), self._ew_grid(a.size))
        return out

    # ------------------------------------------------------------ RoPE
    def _rope_tables(self, T: int, hd: int, theta: float) -> tuple[Tensor, Tensor]:
        key = (hd, float(theta))
        hit = self._rope_cache.get(key)
        if hit is None or hit[0] < T:
            Tc = max(T, 128)
            cos, sin = ref.rope_tables(Tc, hd, theta)
            hit = self._rope_cache[key] = (Tc, self.ctx.upload(cos, "float32"),
                                           self.ctx.upload(sin, "float32"))
        return hit[1], hit[2]

    def rope(self, x: Tensor, T: int, H: int, hd: int, theta: float,
             inverse: bool = False) -> Tensor:
        N = x.shape[0]
        _check(x.shape == (N, H * hd) and hd % 2 == 0 and T > 0 and N % T == 0,
               f"rope: x {x.shape} incompatible with T={T} H={H} hd={hd}")
        cos, sin = self._rope_tables(T, hd, theta)
        y = self._new(x.shape)
        total = N * H * (hd // 2)
        self._launch("rope", [x, cos, sin, y],
                     pack_params("uuuuf", total, T, H, hd, -1.0 if inverse else 1.0),
                     self._ew_grid(total))
        return y

    # ------------------------------------------------------------ attention
    def _attn_check(self, q, k, v, B, T, Hq, Hkv, hd) -> None:
        _check(Hkv > 0 and Hq % Hkv == 0, f"attention: Hq={Hq} not a multiple of Hkv={Hkv}")
        _check(0 < hd <= ATTN_HDMAX,
               f"attention: head_dim={hd} outside the kernel's 1..{ATTN_HDMAX}")
        _check(q.shape == (B * T, Hq * hd) and k.shape == (B * T, Hkv * hd)
               and v.shape == k.shape,
               f"attention: q {q.shape} k {k.shape} v {v.shape} for B={B} T={T} Hq={Hq} "
               f"Hkv={Hkv} hd={hd}")

    @staticmethod
    def _attn_consts(hd: int, tensors: int, fch: int = 4, bch: int = 2) -> dict:
        """attention.wgsl's override constants: VK whole rows of `tensors` tensors are staged
        at a time in 512 vec4 (a power of two <= the 32-row block); forward / backward score
        chunks are FCH / BCH vec4 wide (the stage grows to 9 KiB for FCH 8, 10 KiB for BCH 4)."""
        d4 = -(-hd // 4)
        vk = 32
        while vk * d4 * tensors > 512:
            vk //= 2
        return {"HD": hd, "OV": -(-d4 // 16), "VK": vk, "FCH": fch, "BCH": bch}

    def attention(self, q: Tensor, k: Tensor, v: Tensor, B: int, T: int, Hq: int, Hkv: int,
                  hd: int) -> tuple[Tensor, Tensor]:
        self._attn_check(q, k, v, B, T, Hq, Hkv, hd)
        o, lse = self._new(q.shape), self._new((B, Hq, T))
        params = pack_params("uuuuuf", B, T, Hq, Hkv, hd, F32(1.0 / np.sqrt(hd)))
        nqb = -(-T // 32)                      # 32-row query blocks
        self._launch("attention", [q, k, v, o, lse], params, grid_for(B * Hq * nqb),
                     constants=self._attn_consts(hd, 1, fch=8))
        return o, lse

    def attention_backward(self, do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                           lse: Tensor, B: int, T: int, Hq: int, Hkv: int,
                           hd: int) -> tuple[Tensor, Tensor, Tensor]:
        self._attn_check(q, k, v, B, T, Hq, Hkv, hd)
        _check(do.shape == q.shape and o.shape == q.shape and lse.shape == (B, Hq, T),
               f"attention_backward: do {do.shape} o {o.shape} lse {lse.shape}")
        dq, dk, dv = self._new(q.shape), self._new(k.shape), self._new(v.shape)
        dsum = self._new((B, Hq, T))
        params = pack_params("uuuuuf", B, T, Hq, Hkv, hd, F32(1.0 / np.sqrt(hd)))
        nb = -(-T // 32)                       # 32-row query / key blocks
        # backward_dq writes dsum = rowsum(dO * O), which backward_dkv reads
        self._launch("attention_backward", [q, k, v, do, lse, o, dq, dsum], params,
                     grid_for(B * Hq * nb), entry="backward_dq",
                     constants=self._attn_consts(hd, 1, bch=4))
        # backward_dkv: per query head (N, Hq*hd); a GQA group's heads are summed after
        dkh, dvh = (dk, dv) if Hq == Hkv else (self._new(q.shape), self._new(q.shape))
        self._launch("attention_backward", [q, k, v, do, lse, dsum, dkh, dvh], params,
                     grid_for(B * Hq * nb), entry="backward_dkv",
                     constants=self._attn_consts(hd, 2))
        if Hq != Hkv:
            self._launch("attention_backward", [dkh, dvh, dk, dv], params,
                         grid_for(-(-dk.size // 256)), entry="backward_reduce")
        return dq, dk, dv

    # ------------------------------------------------------------ MLP activation
    def relu2_gate(self, g: Tensor, u: Tensor) -> Tensor:
        _check(g.shape == u.shape, f"relu2_gate shapes differ: {g.shape} {u.shape}")
        h = self._new(g.shape)
        self._launch("relu2_gate", [g, u, h], pack_params("u", g.size), self._ew_grid(g.size))
        return h

    def relu2_gate_backward(self, dh: Tensor, g: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        _check(dh.shape == g.shape == u.shape,
               f"relu2_gate_backward shapes differ: {dh.shape} {g.shape} {u.shape}")
        dg, du = self._new(g.shape), self._new(g.shape)
        self._launch("relu2_gate_backward", [dh, g, u, dg, du], pack_params("u", g.size),
                     self._ew_grid(g.size))
        return dg, du

    # ------------------------------------------------------------ loss
    def cross_entropy(self, logits: Tensor, targets: Tensor,
                      grad_scale: float) -> tuple[Tensor, Tensor]:
        N, V = logits.shape
        _check(targets.dtype == "int32" and targets.shape == (N,),
               f"cross_entropy: targets must be int32 ({N},), got {targets}")
        if targets.host_max is not None and targets.host_max >= V:
            raise IndexError(f"target {targets.host_max} out of range for vocab size {V}")
        loss, d = self._new((N,)), self._new((N, V))
        self._launch("cross_entropy", [logits, targets, loss, d],
                     pack_params("uuf", N, V, F32(grad_scale)), grid_for(N))
        return loss, d

    def lm_head_cross_entropy(self, x: Tensor, w: Tensor | HostTable, targets: Tensor,
                              grad_scale: float, chunk: int = ref.LM_CHUNK,
                              grad: bool = True) -> tuple[Tensor, Tensor | None]:
        """reference.lm_head_cross_entropy. A HostTable streams through one chunk buffer (rows
        uploaded before each chunk's two matmuls): the same kernels on the same values in the
        same order as a GPU-resident table, so the results are identical; `finish` then reads
        W[target] from the N target rows, gathered on the host."""
        host = isinstance(w, HostTable)
        N, D = x.shape
        V = w.shape[0]
        _check(chunk >= 1 and x.dtype == "float32" and w.shape == (V, D)
               and w.dtype in ("float32", "float16"),
               f"lm_head_cross_entropy: x {x} w {w} chunk {chunk}")
        _check(targets.dtype == "int32" and targets.shape == (N,)
               and (targets.host is not None or not host),
               f"lm_head_cross_entropy: targets must be int32 ({N},) (from GpuBackend.tensor "
               f"for a host table), got {targets}")
        if targets.host_max is not None and targets.host_max >= V:
            raise IndexError(f"target {targets.host_max} out of range for vocab size {V}")
        f16 = int(w.dtype == "float16")
        # largest chunk whose logits (and, streamed, whose table rows) fit one storage binding
        vc = max(1, min(chunk, V, self.ctx.max_binding // (4 * max(N, 1))))
        if host:
            vc = min(vc, self._table_rows(w, N))
        logits = self._new((N, vc))
        st = self._new((N, 4))
        acc = self._new((N, D)) if grad else self._dummy()
        loss = self._new((N,))
        mm = {"TRANS_A": 0, "ACC": 0, "SPLIT": 0, "B_F16": f16}
        if host:        # (v0, rows, the tensor holding them, their element offset in it)
            chunks = ((v0, n, wc, 0) for v0, n, wc in self._table_chunks(w, vc))
        else:
            chunks = ((v0, min(vc, V - v0), w, v0 * D) for v0 in range(0, V, vc))
        for v0, n, wc, off in chunks:
            self._launch("matmul", [x, wc, logits], pack_params("uuufuu", N, n, D, 1.0, D, off),
                         (-(-n // 64), -(-N // 64), 1), constants={**mm, "TRANS_B": 1})
            self._launch("lm_head_cross_entropy", [logits, targets, st, acc],
                         pack_params("uuuuu", N, n, v0, D, int(v0 == 0)), grid_for(N),
                         entry="stats", constants={"GRAD": int(grad)})
            if grad:
                self._launch("matmul", [logits, wc, acc],
                             pack_params("uuufuu", N, D, n, 1.0, n, off),
                             (-(-D // 64), -(-N // 64), 1),
                             constants={**mm, "TRANS_B": 0, "ACC": 1})
        sizes = {logits.buffer.size}
        if host:        # row i's target row is row i of `rows` (padding keeps its -1)
            sizes.add(wc.buffer.size)
            t = targets.host
            valid = t >= 0
            table = self.ctx.upload(w.data[np.where(valid, t, 0)], w.dtype)
            targets = self.tensor(np.where(valid, np.arange(N), -1).astype(np.int32))
            V = max(N, 1)
        else:
            table = w
        self._launch("lm_head_cross_entropy", [st, targets, table, acc, loss],
                     pack_params("uuuf", N, D, V, F32(grad_scale)), grid_for(N),
                     entry="finish", constants={"GRAD": int(grad), "F16": f16})
        del logits, wc, chunks
        self.ctx.release(sizes)         # chunk buffers are this op's alone: don't pool them
        return loss, (acc if grad else None)

    def _dummy(self) -> Tensor:
        if getattr(self, "_dummy_t", None) is None:
            self._dummy_t = self._new((4,))
        return self._dummy_t

    # ------------------------------------------------------------ optimizer
    def adamw_(self, p: Tensor, g: Tensor, m: Tensor, v: Tensor, *, step: int, lr: float,
               beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0) -> None:
        _check(p.shape == g.shape == m.shape == v.shape,
               f"adamw_ shapes differ: p {p.shape} g {g.shape} m {m.shape} v {v.shape}")
        _check(step >= 1, f"adamw_ step counts from 1, got {step}")
        params = pack_params("uffffffff" + "f", p.size, F32(1.0 - lr * weight_decay), F32(beta1),
                             F32(1.0 - beta1), F32(beta2), F32(1.0 - beta2),
                             F32(1.0 - beta1 ** step), F32(1.0 - beta2 ** step), F32(lr), F32(eps))
        self._launch("adamw_", [p, g, m, v], params, self._ew_grid(p.size))
