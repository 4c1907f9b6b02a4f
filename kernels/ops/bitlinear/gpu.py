"""GPU launchers of the W1.58A8 BitLinear family for GpuBackend: quantize_act.wgsl,
bitlinear.wgsl (main; main3 for a group of projections as one GEMM; split-K slabs + reduce),
bitlinear_backward.wgsl; semantics: reference.py beside this file. Pretraining's ternarize /
dequantize_act launchers are in train_gpu.py.

Frozen projections stay 2-bit packed in GPU memory (`pack_codes_2bit`, 16 weights per u32;
not the HF checkpoint layout of formats/hf_checkpoint.py). The tile-rows and split-K heuristics
live here with the measurements that set them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from bitswarm.kernels.config import GPU_STE_CHOICES
from bitswarm.kernels.device import Tensor, grid_for
from bitswarm.kernels.ops.bitlinear.reference import (STE_F16_CHUNK, STE_INT_TOP,
                                                       ste_f16_top)
from bitswarm.kernels.ops.check import check

log = logging.getLogger("bitswarm.kernels.bitlinear")

F32 = np.float32
# bitlinear split-K heuristic: split when the output tiles are fewer than BITLINEAR_MIN_WGS,
# each slab summing >= BITLINEAR_MIN_K of K. Off by default (0): on an H200 at N = 512 every
# 2B-4T shape was fastest unsplit (k/v 0.074 ms unsplit vs 0.127 ms in 2 slabs, q/o 0.202 vs
# 0.257: the extra reduce dispatch and the int32 slab traffic cost more than the fuller GPU
# gains; benchmarks/results/kernels-h200.json, group "W1.58A8 GEMM split-K"). Forced counts
# (`GpuBackend.bitlinear_splits`) stay available for other GPUs and the benchmark sweep.
BITLINEAR_MIN_WGS = 0
BITLINEAR_MIN_K = 512
BITLINEAR_KW = 16        # bitlinear.wgsl activation words per K step (16 or 32; see shader)
# bitlinear tile rows: 32-row tiles (twice the workgroups) when the 64x64 tiles are fewer than
# this. Off by default (0): on an H200 32-row tiles gained nothing where they were meant to
# (2B-4T k/v: 0.073 ms either way, 29% of peak; 1b k/v 14.3% vs 13.8%) and lost elsewhere
# (down 43.7% vs 47.0%); benchmarks/results/kernels-h200-tm.json. Forced via `bitlinear_tm`.
BITLINEAR_TM32_BELOW = 0
# STE input gradient: 128 x 128 tiles (bitlinear_backward.wgsl main8) from this many of them
# (a wave and more of an H200's 132 SMs); below, 64 x 64 tiles fill the GPU better.
BACKWARD_T128_MIN = 128
# STE input gradient in packed f16 (bitlinear_backward_f16.wgsl) under BITSWARM_GPU_STE=auto on
# adapters of this PCI vendor whose name holds one of these: where it measured faster than fp32.
# On an H200 (Vulkan, driver 580): 2B-4T step 1,404 -> 1,757 tok/s at 16 x 128 and 1,076 ->
# 1,206 at 4 x 128, and again 1,440 -> 1,778 and 1,084 -> 1,232 with the order reversed
# (benchmarks/results/train_step-h200-issue11-f16*.json; docs/benchmarks.md "f16 STE input
# gradient"). The H100 is the same Hopper SM (inferred, not measured). Elsewhere f32: consumer
# Ampere / Ada parts run f16 FMA at the fp32 rate, and lavapipe runs f16 ~4x slower.
STE_F16_SELECT_DECODE = False   # bitlinear_backward_f16.wgsl SELECT_DECODE default (see there)
STE_F16_AUTO_VENDOR = 0x10DE                    # NVIDIA
STE_F16_AUTO_DEVICES = ("H100", "H200")
# ... and on those adapters without shader-f16 (Dawn, which hides it on NVIDIA's driver) auto
# picks i16: on an H200 through Dawn the 2B-4T step ran 2,123 -> 2,451 tok/s at 16 x 128 and
# 1,808 -> 2,000 at 4 x 128 against fp32 (benchmarks/results/train_step-h200-dawn-f32-i16.json).
STE_I16_AUTO = "i16"
# Int STE split over OUT (bitlinear_backward_int.wgsl SPLIT + reduce; exact, the same bits):
# split when the output tiles are fewer than STE_INT_SPLIT_BELOW, each slab >= STE_INT_MIN_OUT
# of OUT. Forced counts: `GpuBackend.ste_int_splits`. On an H200, i8 (kernels-h200-issue11-
# split-{512,2048}.json): 2B-4T at N 512 q/o 0.283 -> 0.251 ms (2 slabs), gate/up 0.690 ->
# 0.586; at N 2048 (128 tiles) q/o 0.764 -> 0.681, gate/up 2.043 -> 1.706; down (864 tiles)
# and k/v (640 o: slabs too thin) lose 2-13% split, so the rule leaves them whole.
STE_INT_SPLIT_BELOW = 400
STE_INT_MIN_OUT = 512
STE_INT_TERMS = {"i8": 1, "i16": 2}


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


def pack_codes_2bit(codes: np.ndarray) -> np.ndarray:
    """The GPU layout of ternary codes: int8 (out, in) in {-1, 0, 1} -> uint32 (out,
    ceil(in/16)), field i of word j is element 16j+i at bits 2i, stored as code+1 (padding 1 =
    a zero weight). ternarize_pack.wgsl writes the same words. Raises ValueError for other
    values or a non-2-D array."""
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


def quantize_act(be, x: Tensor) -> tuple[Tensor, Tensor]:
    """x f32 (N, C) -> xq int8 (N, C) packed 4 per u32, x_scale f32 (N,). One workgroup a row."""
    N, C = x.shape
    xq, xs = be._new((N, C), "int8"), be._new((N,))
    be._launch("quantize_act", [x, xq, xs], grid_for(N), dict(rows=N, c=C, c4=(C + 3) // 4))
    return xq, xs


def bitlinear_tile8(be, N: int, OUT: int) -> bool:
    """Whether the unsplit forward runs 128 x 128 tiles (bitlinear.wgsl main8 / main3_8): the
    forced `be.bitlinear_tm` == 128, else when those tiles alone fill a big GPU (at least
    BACKWARD_T128_MIN of them, as for the STE gradient) and no other tile size is forced."""
    if be.bitlinear_tm is not None:
        return be.bitlinear_tm == 128
    return -(-OUT // 128) * -(-N // 128) >= BACKWARD_T128_MIN


def bitlinear_tile_rows(be, N: int, OUT: int) -> int:
    """Output rows per bitlinear workgroup tile (64 or 32): the forced `be.bitlinear_tm`, else
    32 when the 64x64 tiles are fewer than BITLINEAR_TM32_BELOW (too few to fill the GPU)."""
    if be.bitlinear_tm is not None:
        check(be.bitlinear_tm in (32, 64, 128),
              f"bitlinear_tm must be 32, 64 or 128, got {be.bitlinear_tm}")
        return min(int(be.bitlinear_tm), 64)
    return 32 if -(-OUT // 64) * -(-N // 64) < BITLINEAR_TM32_BELOW else 64


TC_CONFIG = ("i8", "i32", 16, 16, 32)     # bitlinear_tc.wgsl's subgroup matrix shape
TC_K = 64                                 # its K stage: K must be a multiple
# ... and from this many tokens: on an H200 (Dawn) the 2B-4T step at 16 x 128 (N 2048) ran
# 3,992 -> 5,335 tok/s with it (i8 STE, activation budget), while at 4 x 128 (N 512, where only
# gate/up has >= 128 tiles) 3,067 -> 2,793: the probe's q/o GEMM at N 512 gained nothing
# either (benchmarks/results/train_step-h200-dawn-{tc,notc}.json, subgroup_matrix-h200-unrolled.json)
TC_MIN_N = 2048
# ... and K: measured at 2B-4T's K 2560 / 6912 only (125M's K 768 was not: its shapes keep the
# measured dot4I8Packed path)
TC_MIN_K = 2560
TC_SMEM = 20480                           # bitlinear_tc.wgsl's workgroup memory, bytes
# bitlinear_backward_tc_{i8,i16}.wgsl: o per stage (OUT must be a multiple), dx columns per workgroup
# and workgroup memory in bytes by terms (1: main_i8, 2: main_i16)
STE_TC_O = 64
STE_TC_COLS = {1: 128, 2: 64}
STE_TC_SMEM = {1: 19456, 2: 25600}
# ... from this many tokens (with >= BACKWARD_T128_MIN tiles): on an H200 the 2B-4T step (i16)
# went 3,968 -> 6,387 tok/s at 16 x 128 and 2,498 -> 3,125 at 4 x 128 (N 512) with it
# (benchmarks/results/train_step-h200-dawn-s5-{nostetc,default,4-stetc}.json)
STE_TC_MIN_N = 512


def _tc_device(be, smem: int) -> bool:
    """Whether the device runs the tensor-core shaders: TC_CONFIG with subgroups of exactly 32
    invocations (the shaders derive an invocation's subgroup from local_invocation_index / 32)
    and `smem` bytes of workgroup memory."""
    cfgs = getattr(be.ctx, "subgroup_matrix_configs", [])
    lim = getattr(be.ctx, "limits", {}).get("max-compute-workgroup-storage-size", 16384)
    return int(lim) >= smem and any(
        (c["component_type"], c["result_component_type"], c["m"], c["n"], c["k"]) == TC_CONFIG
        and int(c["min_subgroup_size"]) == int(c["max_subgroup_size"]) == 32 for c in cfgs)


def bitlinear_tc_ok(be, N: int, K: int, OUT: int) -> bool:
    """Whether the forward runs on int8 tensor cores (bitlinear_tc.wgsl): the device has
    TC_CONFIG (Dawn; kernels/device/runtime.py) with subgroups of exactly 32 invocations, K is
    a multiple of TC_K, and `be.bitlinear_tc` is True, or None with N >= TC_MIN_N tokens,
    K >= TC_MIN_K and at least BACKWARD_T128_MIN of its 128 x 128 tiles (where it measured
    faster than the dot4I8Packed tiles: on an H200 the probe's GEMM took 0.95 ms at 2B-4T
    gate/up, N 2048, against 1.46 for main8)."""
    if be.bitlinear_tc is False or K % TC_K or not _tc_device(be, TC_SMEM):
        return False
    return bool(be.bitlinear_tc) or (N >= TC_MIN_N and K >= TC_MIN_K
                                     and -(-OUT // 128) * -(-N // 128) >= BACKWARD_T128_MIN)


def ste_tc_ok(be, N: int, K: int, OUT: int, terms: int) -> bool:
    """Whether the int STE input gradient dy (N, OUT) -> dx (N, K) runs on int8 tensor cores
    (bitlinear_backward_tc_i8.wgsl / _i16.wgsl for `terms` 1 / 2): the device as
    for the forward, OUT a multiple of STE_TC_O, and `be.ste_tc` True, or None with
    N >= STE_TC_MIN_N tokens and at least BACKWARD_T128_MIN workgroup tiles (128 x 128 for
    i8, 128 x 64 for i16)."""
    if be.ste_tc is False or OUT % STE_TC_O or not _tc_device(be, STE_TC_SMEM[terms]):
        return False
    tiles = -(-K // STE_TC_COLS[terms]) * -(-N // 128)
    return bool(be.ste_tc) or (N >= STE_TC_MIN_N and tiles >= BACKWARD_T128_MIN)


def bitlinear_plan(be, N: int, K: int, OUT: int) -> tuple[int, int]:
    """(slabs, K steps per slab) the bitlinear forward uses for (N, K) x (OUT, K)^T: the forced
    `be.bitlinear_splits` or the heuristic (BITLINEAR_MIN_WGS), clamped to the number of K
    steps (4 * bitlinear_kw int8 each), without empty slabs; 1 if the int32 slabs would exceed
    a storage binding."""
    nsteps = max(1, -(-K // (4 * be.bitlinear_kw)))    # the kernel's K steps
    if be.bitlinear_splits is not None:
        splits = max(1, int(be.bitlinear_splits))
    else:
        tiles = -(-OUT // 64) * -(-N // bitlinear_tile_rows(be, N, OUT))
        splits = min(-(-BITLINEAR_MIN_WGS // tiles), K // BITLINEAR_MIN_K)
    splits = max(1, min(splits, nsteps))
    spz = -(-nsteps // splits)
    splits = -(-nsteps // spz)                 # no empty slabs
    if splits * N * OUT * 4 > be.ctx.max_binding:
        return 1, nsteps
    return splits, spz


def _gemm_params(N, OUT, K, w0: GpuTernary, spz, o1, o2, s1, s2) -> dict:
    """bitlinear.wgsl's Params (main and main3 share it; main ignores o1, o2, s1, s2)."""
    return dict(n=N, out=OUT, k4=(K + 3) // 4, k16=(K + 15) // 16, weight_scale=w0.weight_scale,
                spz=spz, wrow0=w0.row0, o1=o1, o2=o2, s1=s1, s2=s2)


def _bitlinear(be, xq: Tensor, x_scale: Tensor, w: GpuTernary, int_out: bool) -> Tensor:
    check(xq.dtype == "int8", f"bitlinear needs int8 activations (quantize_act), got {xq}")
    N, K = xq.shape
    check(K == w.in_features, f"bitlinear: x has {K} features, weight expects {w.in_features}")
    check(x_scale.shape == (N,), f"bitlinear: x_scale {x_scale.shape} for {N} rows")
    OUT = w.out_features
    op = "bitlinear_int" if int_out else "bitlinear"
    y = be._new((N, OUT), "int32" if int_out else "float32")
    splits, spz = bitlinear_plan(be, N, K, OUT)
    kw = be.bitlinear_kw
    check(kw in (16, 32), f"bitlinear_kw must be 16 or 32, got {kw}")
    tm = bitlinear_tile_rows(be, N, OUT)
    # o1 = o2 = OUT: one output segment (main3's fields, unused by main)
    params = _gemm_params(N, OUT, K, w, spz, OUT, OUT, 1.0, 1.0)
    if splits == 1 and bitlinear_tc_ok(be, N, K, OUT):
        # y1 / y2 go unwritten (o1 = o2 = out) but must be distinct buffers: Dawn rejects
        # two writable bindings of one buffer
        be._launch(op, [xq, x_scale, w.packed, y, be._dummy(), be._new((4,))],
                   (-(-OUT // 128), -(-N // 128), 1),
                   params, name="tc", constants={"INT_OUT": int(int_out)})
        return y
    if splits >= 2:
        part = be._new((splits, N, OUT), "int32")
        be._launch(op, [xq, x_scale, w.packed, part], (-(-OUT // 64), -(-N // tm), splits),
                   params, constants={"INT_OUT": int(int_out), "SPLIT": 1, "KW": kw, "TM": tm})
        be._launch(op, [part, x_scale, y], be._ew_grid(N * OUT),
                   dict(n=N, out=OUT, splits=splits, weight_scale=w.weight_scale),
                   name="reduce", constants={"INT_OUT": int(int_out)})
        return y
    if bitlinear_tile8(be, N, OUT):
        be._launch(op, [xq, x_scale, w.packed, y], (-(-OUT // 128), -(-N // 128), 1), params,
                   name="main8", constants={"INT_OUT": int(int_out)})
        return y
    be._launch(op, [xq, x_scale, w.packed, y], (-(-OUT // 64), -(-N // tm), 1), params,
               constants={"INT_OUT": int(int_out), "KW": kw, "TM": tm})
    return y


def bitlinear(be, xq: Tensor, x_scale: Tensor, w: GpuTernary) -> Tensor:
    """xq int8 (N, in), x_scale f32 (N,), w (out, in) -> y f32 (N, out)."""
    return _bitlinear(be, xq, x_scale, w, False)


def bitlinear_int(be, xq: Tensor, w: GpuTernary) -> Tensor:
    """The exact int32 core (N, out) = xq @ codes^T (reference.bitlinear_int); for tests."""
    dummy = be._new((xq.shape[0],))
    return _bitlinear(be, xq, dummy, w, True)


def bitlinear_group(be, xq: Tensor, x_scale: Tensor, ws: list[GpuTernary]) -> list[Tensor]:
    """[bitlinear(xq, x_scale, w) for w in ws], bit-identical, as ONE GEMM (entry main3) when
    2-3 projections of a `ternary_group` lie back to back in one packed buffer and the GEMM
    runs unsplit; otherwise one launch each. Shapes: xq int8 (N, K) -> a list of f32 (N, out_i)."""
    N, K = xq.shape
    fused = (2 <= len(ws) <= 3 and all(w.packed is ws[0].packed for w in ws)
             and all(b.row0 == a.row0 + a.out_features for a, b in zip(ws, ws[1:])))
    OUT = sum(w.out_features for w in ws)
    if not fused or bitlinear_plan(be, N, K, OUT)[0] != 1:
        return [bitlinear(be, xq, x_scale, w) for w in ws]
    check(xq.dtype == "int8" and all(w.in_features == K for w in ws)
           and x_scale.shape == (N,), f"bitlinear_group: xq {xq} x_scale {x_scale} for "
           f"weights {[w.shape for w in ws]}")
    ys = [be._new((N, w.out_features)) for w in ws]
    o1 = ws[0].out_features
    o2 = o1 + ws[1].out_features
    s2 = ws[2].weight_scale if len(ws) == 3 else F32(1.0)
    tm = bitlinear_tile_rows(be, N, OUT)
    check(be.bitlinear_kw in (16, 32), f"bitlinear_kw must be 16 or 32, got {be.bitlinear_kw}")
    bindings = [xq, x_scale, ws[0].packed, ys[0], ys[1], ys[2] if len(ws) == 3 else be._dummy()]
    params = _gemm_params(N, OUT, K, ws[0], 1 << 30, o1, o2, ws[1].weight_scale, s2)
    if bitlinear_tc_ok(be, N, K, OUT):
        be._launch("bitlinear_group", bindings, (-(-OUT // 128), -(-N // 128), 1), params,
                   name="tc")
        return ys
    if bitlinear_tile8(be, N, OUT):
        be._launch("bitlinear_group", bindings, (-(-OUT // 128), -(-N // 128), 1), params,
                   name="main3_8")
        return ys
    be._launch("bitlinear_group", bindings, (-(-OUT // 64), -(-N // tm), 1), params,
               constants={"KW": be.bitlinear_kw, "TM": tm})
    return ys


def bitlinear_backward_tile(be, N: int, K: int) -> int:
    """Output tile edge of the STE input gradient (64: entry main, 128: main8): the forced
    `be.bitlinear_bwd_tile`, else 128 when its tiles alone fill a big GPU (at least
    BACKWARD_T128_MIN of them: 2B-4T at 16 x 128 tokens has 320-864, at 4 x 128 80-216)."""
    forced = getattr(be, "bitlinear_bwd_tile", None)
    if forced is not None:
        check(forced in (64, 128), f"bitlinear_bwd_tile must be 64 or 128, got {forced}")
        return int(forced)
    return 128 if -(-K // 128) * -(-N // 128) >= BACKWARD_T128_MIN else 64


def ste_precision(setting: str | None, features, info: dict) -> str:
    """The STE input gradient's arithmetic for a device with wgpu `features` and adapter `info`
    under `setting` (None reads the environment variable BITSWARM_GPU_STE, default "auto"):
    "f32" (fp32 sums), "f16" (packed-f16 partial sums; needs the shader-f16 feature, without
    it "f32", logged), "i16" or "i8" (dy quantized per row to 15- or 8-bit integers, int8 dot
    products: bitlinear_backward_int.wgsl). "auto" is the measured-faster choice: f16 on the
    adapters named by STE_F16_AUTO_VENDOR / STE_F16_AUTO_DEVICES (i16 there when the runtime
    gives no shader-f16: Dawn), f32 elsewhere. Raises ValueError for another setting."""
    if setting is None:
        setting = os.environ.get("BITSWARM_GPU_STE", "auto")
    setting = setting.strip().lower()
    if setting not in GPU_STE_CHOICES:
        raise ValueError(f"BITSWARM_GPU_STE / ste_precision must be one of "
                         f"{', '.join(GPU_STE_CHOICES)}, got {setting!r}")
    if setting in STE_INT_TERMS:
        return setting
    has_f16 = "shader-f16" in features
    if setting == "f16" and not has_f16:
        log.warning("f16 STE gradient asked for, but this adapter lacks shader-f16: fp32")
    if setting == "f32" or (setting == "f16" and not has_f16):
        return "f32"
    if setting == "f16":
        return "f16"
    measured = (int(info.get("vendor_id") or 0) == STE_F16_AUTO_VENDOR
                and any(d in str(info.get("device", "")) for d in STE_F16_AUTO_DEVICES))
    if not measured:
        return "f32"
    # Dawn hides shader-f16 on NVIDIA (kernels/device/runtime.py): i16 is more precise than
    # f16 (dx relative error 1.0e-4 vs 7.5e-4 at 2B-4T) and beat fp32 there (STE_I16_AUTO).
    return "f16" if has_f16 else STE_I16_AUTO


def bitlinear_backward(be, dy: Tensor, w: GpuTernary, acc: Tensor | None = None) -> Tensor:
    """STE input gradient: dy f32 (N, out) -> dx f32 (N, in) = dy @ codes / weight_scale
    (+ acc f32 (N, in)). fp32 sums (bitlinear_backward.wgsl), or with `be.ste_precision` "f16"
    packed-f16 partial sums (bitlinear_backward_f16.wgsl; error bound in reference.py
    `bitlinear_backward_f16`), or "i16" / "i8" exact int8 dot products of dy quantized per row
    (bitlinear_backward_int.wgsl; reference.py `bitlinear_backward_int`). Raises ValueError
    (check) for mismatched shapes."""
    N, OUT = dy.shape
    K = w.in_features
    dx, t, grid = _backward_setup(be, dy, w, acc, "float32")
    prec = getattr(be, "ste_precision", "f32")
    if prec == "f16":
        _backward_f16(be, dy, w, dx, acc is not None, t, grid)
        return dx
    if prec in STE_INT_TERMS:
        _backward_int(be, dy, w, dx, acc is not None, t, grid, STE_INT_TERMS[prec], False)
        return dx
    be._launch("bitlinear_backward", [dy, w.packed, dx], grid,
               dict(n=N, out=OUT, k=K, k16=(K + 15) // 16, weight_scale=w.weight_scale,
                    wrow0=w.row0), name="main8" if t == 128 else None,
               constants={"ACC": int(acc is not None)})
    return dx


def bitlinear_backward_f16(be, dy: Tensor, w: GpuTernary, acc: Tensor | None = None
                           ) -> Tensor:
    """bitlinear_backward on the f16 path whatever `be.ste_precision` says (tests, benchmarks);
    the device must have shader-f16 (else DeviceError from the shader build)."""
    saved = getattr(be, "ste_precision", "f32")
    be.ste_precision = "f16"
    try:
        return bitlinear_backward(be, dy, w, acc)
    finally:
        be.ste_precision = saved


def _backward_f16(be, dy: Tensor, w: GpuTernary, dx: Tensor, acc: bool, t: int, grid) -> None:
    """Encode bitlinear_backward_f16.wgsl: `rows` (per-row exponent, dy as scaled f16 with
    rows padded to 16), then main (t = 64) or main8 (t = 128) into dx."""
    N, OUT = dy.shape
    K = w.in_features
    chunk = getattr(be, "ste_chunk", STE_F16_CHUNK)
    top = ste_f16_top(chunk)
    op = -(-OUT // 16) * 16
    dy16, rs = be._new((N, op), "float16"), be._new((N,))
    be._launch("bitlinear_backward_f16", [dy, dy16, rs], grid_for(N),
               dict(n=N, out=OUT, op2=op // 2, top=top), name="rows")
    be._launch("bitlinear_backward_f16", [dy16, rs, w.packed, dx], grid,
               dict(n=N, out=OUT, op4=op // 4, k=K, k16=(K + 15) // 16,
                    weight_scale=w.weight_scale, wrow0=w.row0),
               name="main8" if t == 128 else "main",
               constants={"ACC": int(acc), "CH": chunk,
                          "SELECT_DECODE": int(getattr(be, "ste_select_decode", False))})


def bitlinear_backward_int(be, dy: Tensor, w: GpuTernary, acc: Tensor | None = None,
                           terms: int = 2, int_out: bool = False) -> Tensor:
    """bitlinear_backward on the int8 dot-product path (bitlinear_backward_int.wgsl) with
    `terms` 1 (i8) or 2 (i16) whatever `be.ste_precision` says (tests, benchmarks); int_out:
    the exact int32 sums (N, in) as an int32 tensor instead of dx (acc must be None)."""
    check(terms in (1, 2), f"bitlinear_backward_int: terms must be 1 or 2, got {terms}")
    check(not (int_out and acc is not None), "bitlinear_backward_int: int_out takes no acc")
    dx, t, grid = _backward_setup(be, dy, w, acc, "int32" if int_out else "float32")
    _backward_int(be, dy, w, dx, acc is not None, t, grid, terms, int_out)
    return dx


def _backward_setup(be, dy: Tensor, w: GpuTernary, acc: Tensor | None, dtype: str):
    """The STE launchers' shared start: shape checks, dx (N, in) of `dtype` (a copy of acc when
    given), the tile edge and the grid -> (dx, t, grid)."""
    N, OUT = dy.shape
    check(OUT == w.out_features, f"bitlinear_backward: dy {dy.shape} vs weight {w.shape}")
    K = w.in_features
    dx = be._new((N, K), dtype)
    if acc is not None:
        check(acc.shape == (N, K), f"bitlinear_backward: acc {acc.shape} != {(N, K)}")
        be.ctx.copy(acc, dx)
    t = bitlinear_backward_tile(be, N, K)
    return dx, t, (-(-K // t), -(-N // t), 1)


def _backward_int(be, dy: Tensor, w: GpuTernary, dx: Tensor, acc: bool, t: int, grid,
                  terms: int, int_out: bool) -> None:
    """Encode bitlinear_backward_int.wgsl: `rows` (per-row exponent, dy as `terms` i8x4
    word arrays, rows of ceil(out / 4) words), then the tensor-core entry (ste_tc_ok), main
    (t = 64) or main8 (t = 128) into dx."""
    N, OUT = dy.shape
    K = w.in_features
    op4 = -(-OUT // 4)
    hi = be._new((N, OUT), "int8")           # int8 tensors: rows of ceil(OUT / 4) words
    lo = be._new((N, OUT), "int8") if terms == 2 else be._dummy()
    rs = be._new((N,))
    consts = {"TERMS": terms}
    be._launch("bitlinear_backward_int", [dy, hi, lo, rs], grid_for(N),
               dict(n=N, out=OUT, op4=op4, top=STE_INT_TOP[terms]), name="rows",
               constants=consts)
    splits, spz = ste_int_plan(be, N, K, OUT, t)
    params = dict(n=N, out=OUT, op4=op4, k=K, k16=(K + 15) // 16, weight_scale=w.weight_scale,
                  wrow0=w.row0, spz=spz)
    if ste_tc_ok(be, N, K, OUT, terms):
        dys = [hi] if terms == 1 else [hi, lo]          # the i8 shader has no lo binding
        be._launch("bitlinear_backward_int", [*dys, rs, w.packed, dx],
                   (-(-K // STE_TC_COLS[terms]), -(-N // 128), 1), params,
                   name="tc_i8" if terms == 1 else "tc_i16",
                   constants={"ACC": int(acc), "INT_OUT": int(int_out)})
        return
    name = "main8" if t == 128 else "main"
    if splits == 1:
        be._launch("bitlinear_backward_int", [hi, lo, rs, w.packed, dx], grid, params,
                   name=name, constants={**consts, "ACC": int(acc), "INT_OUT": int(int_out)})
        return
    part = be._new((splits, N, K), "int32")
    be._launch("bitlinear_backward_int", [hi, lo, rs, w.packed, part],
               (grid[0], grid[1], splits), params, name=name, constants={**consts, "SPLIT": 1})
    be._launch("bitlinear_backward_int", [part, rs, dx], grid_for(-(-N * K // 256)),
               dict(n=N, k=K, splits=splits, weight_scale=w.weight_scale), name="reduce",
               constants={"ACC": int(acc), "INT_OUT": int(int_out)})


def ste_int_plan(be, N: int, K: int, OUT: int, t: int) -> tuple[int, int]:
    """(slabs, o steps per slab) of the int STE for dy (N, OUT) -> dx (N, K) on t x t tiles: the
    forced `be.ste_int_splits`, else split when the tiles are fewer than STE_INT_SPLIT_BELOW
    (enough slabs to reach it, each >= STE_INT_MIN_OUT of OUT); no empty slabs."""
    ow = 16 if t == 64 else 8                              # o-words per step: OW / OW8
    nsteps = max(1, -(-(-(-OUT // 4)) // ow))              # ceil(ceil(OUT / 4) / ow)
    splits = getattr(be, "ste_int_splits", None)
    if splits is None:
        tiles = -(-K // t) * -(-N // t)
        splits = 1
        if tiles < STE_INT_SPLIT_BELOW:
            splits = min(-(-STE_INT_SPLIT_BELOW // tiles), max(1, OUT // STE_INT_MIN_OUT))
    check(int(splits) >= 1, f"ste_int_splits must be >= 1, got {splits}")
    splits = max(1, min(int(splits), nsteps))
    spz = -(-nsteps // splits)
    return -(-nsteps // spz), spz
