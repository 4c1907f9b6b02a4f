"""The W1.58A8 BitLinear family (kernels/ops/bitlinear/) on the GPU against its NumPy reference.

Exact: quantize_act's int8 values and x_scale bits, the bitlinear int32 accumulator (every tile
/ K-step / split-K variant), the ternary codes GIVEN the GPU's scale (round(w*s) is correctly
rounded in WGSL), the 2-bit packed layout. Toleranced: bitlinear's f32 output (one WGSL
division: rtol 4e-7), the backward (fp32 sums in another order), the absmean scale (fp32 tree
sum + WGSL's 2.5-ulp division vs NumPy's float64 mean: rtol 1e-5), dequantize_act (one WGSL
division: rtol 1e-6).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.ops.bitlinear import gpu as blg
from bitswarm.kernels.ops.bitlinear import reference as ref
from bitswarm.kernels.ops.bitlinear.gpu import pack_codes_2bit

from .helpers import rnd, ternary

F32 = np.float32


def _quant_inputs(rng):
    cases = [rnd(rng, 1, 1), rnd(rng, 5, 3), rnd(rng, 37, 300), rnd(rng, 3, 1001, scale=1e30)]
    # one value per row over 40 binades: stresses the correctly rounded 127/absmax
    mags = np.exp2(rng.uniform(-16, 24, 4000)) * rng.uniform(1, 2, 4000)
    cases.append((mags * rng.choice([-1, 1], 4000)).astype(F32)[:, None])
    # exact .5 ties after scaling (absmax 127 -> s = 1): round half to even
    cases.append(np.array([[127, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5], [0, 0, 0, 0, 0, 0, 0],
                           [1e-7, -2e-6, 0, 0, 0, 0, 0]], F32))
    # random rows with huge dynamic range inside the row
    cases.append((rnd(rng, 64, 45) * np.exp2(rng.integers(-20, 20, (64, 45)))).astype(F32))
    return cases


def test_quantize_act_exact(gpu):
    rng = np.random.default_rng(4)
    for x in _quant_inputs(rng):
        xq, xs = gpu.quantize_act(gpu.tensor(x))
        rq, rs = ref.quantize_act(x)
        gq, gs = gpu.numpy(xq), gpu.numpy(xs)
        assert gq.dtype == np.int8 and gq.shape == x.shape
        np.testing.assert_array_equal(gs.view(np.int32), rs.view(np.int32),
                                      err_msg=f"x_scale bits differ for shape {x.shape}")
        np.testing.assert_array_equal(gq, rq, err_msg=f"int8 values differ for shape {x.shape}")


@pytest.mark.parametrize("N,K,OUT", [(1, 1, 1), (37, 100, 70), (65, 300, 129), (2, 2560, 17)])
def test_bitlinear_integer_core_exact(gpu, N, K, OUT):
    rng = np.random.default_rng(5)
    xq = rng.integers(-128, 128, (N, K)).astype(np.int8)       # full int8 range
    w = ternary(rng, OUT, K)
    got = gpu.numpy(gpu.bitlinear_int(gpu.tensor(xq), gpu.ternary(w)))
    np.testing.assert_array_equal(got, ref.bitlinear_int(xq, w.codes))


@pytest.mark.parametrize("N,K,OUT", [(1, 1, 1), (37, 100, 70), (65, 300, 129)])
def test_bitlinear_quantized_chain(gpu, close, N, K, OUT):
    """quantize_act -> bitlinear on the GPU vs the same reference chain."""
    rng = np.random.default_rng(6)
    x, w = rnd(rng, N, K, scale=30.0), ternary(rng, OUT, K, ws=0.37)
    xq, xs = gpu.quantize_act(gpu.tensor(x))
    y = gpu.numpy(gpu.bitlinear(xq, xs, gpu.ternary(w)))
    rq, rs = ref.quantize_act(x)
    # int core exact, then one f32 division (WGSL: within 2.5 ulp)
    close(y, ref.bitlinear(rq, rs, w.codes, w.weight_scale), 0, 4e-7, "bitlinear y")


@pytest.mark.parametrize("N,K,OUT", [(37, 700, 70), (65, 1000, 129), (2, 2560, 17)])
def test_bitlinear_split_k_exact(gpu, close, N, K, OUT):
    """Tile rows 64, 32 and 128 (bitlinear_tm; 128 is the 128 x 128 entry main8) x K steps of 64 and of 128 int8 (bitlinear_kw 16, 32)
    x split-K (forced 1, 2, 3 slabs, the default (unsplit), and the heuristic switched on,
    which picks 5 for (2, 2560, 17)): the int32 core equals the reference exactly; the f32
    output is bit-identical to the unsplit TM=64 KW=16 kernel's and within the chain test's
    tolerance of the reference. K is not a multiple of 64 nor of the slab size (700 = 11 steps
    of 64 -> slabs of 4, 4, 3 steps); N and OUT are not multiples of 32 or 64 (37 and 65 rows:
    2 and 3 row tiles at TM = 32, partial last ones)."""
    rng = np.random.default_rng(8)
    xq = rng.integers(-128, 128, (N, K)).astype(np.int8)
    xs = rng.uniform(0.01, 2.0, N).astype(F32)
    w = ternary(rng, OUT, K, ws=0.37)
    gw, gx, gs = gpu.ternary(w), gpu.tensor(xq), gpu.tensor(xs)
    want_i = ref.bitlinear_int(xq, w.codes)
    want_f = ref.bitlinear(xq, xs, w.codes, w.weight_scale)
    saved = gpu.bitlinear_splits, gpu.bitlinear_kw, gpu.bitlinear_tm
    saved_wgs, saved_tm32 = blg.BITLINEAR_MIN_WGS, blg.BITLINEAR_TM32_BELOW
    try:
        ys = {}
        for tm in (64, 32, 128):            # 128: entry main8 (unsplit), else 64-row tiles
            for kw in (16, 32):
                for splits in (1, 2, 3, None):
                    gpu.bitlinear_splits, gpu.bitlinear_kw, gpu.bitlinear_tm = splits, kw, tm
                    np.testing.assert_array_equal(
                        gpu.numpy(gpu.bitlinear_int(gx, gw)), want_i,
                        err_msg=f"int32 core, tm={tm} kw={kw} splits={splits}")
                    ys[tm, kw, splits] = gpu.numpy(gpu.bitlinear(gx, gs, gw))
        gpu.bitlinear_splits, gpu.bitlinear_kw, gpu.bitlinear_tm = None, 16, None
        assert gpu.bitlinear_tile_rows(512, 640) == 64            # default: 64-row tiles
        blg.BITLINEAR_TM32_BELOW = 264                             # the heuristic switched on
        assert gpu.bitlinear_tile_rows(512, 640) == 32            # k/v at 2B-4T: 80 tiles
        assert gpu.bitlinear_tile_rows(512, 2560) == 64           # q/o at 2B-4T: 320 tiles
        assert gpu.bitlinear_tile_rows(N, OUT) == 32              # these shapes: 32
        assert gpu.bitlinear_plan(2, 2560, 17) == (1, 40)         # default: unsplit
        assert blg.bitlinear_tile8(gpu, 2048, 2560)               # 2B-4T at 16 x 128 tokens
        assert not blg.bitlinear_tile8(gpu, 512, 2560)            # ... at 4 x 128: 80 tiles
        blg.BITLINEAR_MIN_WGS = 512                                # the heuristic switched on
        assert gpu.bitlinear_plan(2, 2560, 17) == (5, 8)          # 40 K steps, 8 per slab
        assert gpu.bitlinear_plan(512, 2560, 6912)[0] == 1        # gate/up: 864 tiles
        np.testing.assert_array_equal(gpu.numpy(gpu.bitlinear_int(gx, gw)), want_i,
                                      err_msg="int32 core, heuristic on")
    finally:
        gpu.bitlinear_splits, gpu.bitlinear_kw, gpu.bitlinear_tm = saved
        blg.BITLINEAR_MIN_WGS, blg.BITLINEAR_TM32_BELOW = saved_wgs, saved_tm32
    for key, y in ys.items():
        np.testing.assert_array_equal(y.view(np.int32), ys[64, 16, 1].view(np.int32),
                                      err_msg=f"f32 output bits, (tm, kw, splits)={key} vs "
                                              "unsplit TM=64 KW=16")
    close(ys[64, 16, 1], want_f, 0, 4e-7, "bitlinear y")  # one f32 division, as the chain test


@pytest.mark.parametrize("N,K,outs", [(37, 100, (70, 20, 20)), (65, 300, (129, 33)),
                                      (3, 64, (64, 16, 16)), (70, 700, (16, 48, 200))])


def test_bitlinear_group_is_one_launch_and_bit_identical(gpu, N, K, outs):
    """q/k/v (or gate/up) of one layer uploaded as one packed buffer and run as ONE GEMM
    (entry main3) give the same bits as separate uploads and launches, and equal the reference
    exactly in the int32 core (checked through bitlinear_int on each view); the STE backward
    reads its rows of the shared buffer (row0)."""
    rng = np.random.default_rng(11)
    ws = [ternary(rng, o, K, ws=0.3 + 0.2 * j) for j, o in enumerate(outs)]
    xq = rng.integers(-128, 128, (N, K)).astype(np.int8)
    xs = rng.uniform(0.01, 2.0, N).astype(F32)
    gx, gs = gpu.tensor(xq), gpu.tensor(xs)
    group = gpu.ternary_group(ws)
    assert len({id(g.packed) for g in group}) == 1
    before = gpu.ctx.n_dispatches
    ys = gpu.bitlinear_group(gx, gs, group)
    assert gpu.ctx.n_dispatches == before + 1                      # one GEMM for the group
    want = ref.bitlinear_group(xq, xs, [w.codes for w in ws], [w.weight_scale for w in ws])
    for w, g, y, r in zip(ws, group, ys, want):
        alone = gpu.numpy(gpu.bitlinear(gx, gs, gpu.ternary(w)))
        got = gpu.numpy(y)
        np.testing.assert_array_equal(got.view(np.int32), alone.view(np.int32))
        np.testing.assert_array_equal(gpu.numpy(gpu.bitlinear(gx, gs, g)).view(np.int32),
                                      alone.view(np.int32))          # a view, launched alone
        np.testing.assert_array_equal(gpu.numpy(gpu.bitlinear_int(gx, g)),
                                      ref.bitlinear_int(xq, w.codes))
        assert np.max(np.abs(got - r)) <= 4e-7 * np.max(np.abs(r))
        gpu.bitlinear_tm = 128                                       # entry main3_8
        try:
            y8 = gpu.bitlinear_group(gx, gs, group)[group.index(g)]
        finally:
            gpu.bitlinear_tm = None
        np.testing.assert_array_equal(gpu.numpy(y8).view(np.int32), alone.view(np.int32))
        dy = rnd(rng, N, w.codes.shape[0])
        np.testing.assert_array_equal(gpu.numpy(gpu.bitlinear_backward(gpu.tensor(dy), g)),
                                      gpu.numpy(gpu.bitlinear_backward(gpu.tensor(dy),
                                                                       gpu.ternary(w))))
    with pytest.raises(ValueError, match="input widths"):
        gpu.ternary_group([ternary(rng, 4, K), ternary(rng, 4, K + 1)])


@pytest.mark.parametrize("N,OUT,K,use_acc", [(1, 1, 1, False), (37, 70, 100, True),
                                             (65, 129, 300, False), (3, 2560, 20, True),
                                             (200, 40, 260, True)])


@pytest.mark.parametrize("tile", [64, 128])
def test_bitlinear_backward(gpu, close, N, OUT, K, use_acc, tile):
    rng = np.random.default_rng(7)
    dy, w = rnd(rng, N, OUT), ternary(rng, OUT, K, ws=0.37)
    acc = rnd(rng, N, K) if use_acc else None
    got = {}
    for t in (64, tile):                    # main (64 x 64 tiles) or main8 (128 x 128)
        gpu.bitlinear_bwd_tile = t
        try:
            got[t] = gpu.numpy(gpu.bitlinear_backward(gpu.tensor(dy), gpu.ternary(w),
                                                      None if acc is None else gpu.tensor(acc)))
        finally:
            gpu.bitlinear_bwd_tile = None
    # the same per-output sum in the same o order: the same bits from either tile
    np.testing.assert_array_equal(got[tile].view(np.int32), got[64].view(np.int32))
    got = got[tile]
    want = ref.bitlinear_backward(dy, w.codes, w.weight_scale) + (0 if acc is None else acc)
    # fp32 sum of OUT terms in another order: error ~ eps * sqrt(OUT) * |terms|
    close(got, want, 2e-6 * np.sqrt(OUT) / w.weight_scale, 1e-5, "bitlinear_backward dx")


def test_bitlinear_backward_tile_heuristic(gpu):
    """128 x 128 tiles only where they alone fill a big GPU (2B-4T q/o at 16 x 128 tokens)."""
    assert gpu.bitlinear_backward_tile(2048, 2560) == 128
    assert gpu.bitlinear_backward_tile(512, 2560) == 64      # 80 tiles of 128: under a wave
    assert gpu.bitlinear_backward_tile(37, 100) == 64


def test_ternarize_matches_reference(gpu, close):
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((12, 37)) * 0.02).astype(F32),      # K not a multiple of 16
          (rng.standard_normal((64, 300)) * 3).astype(F32),
          np.zeros((4, 16), F32)]                                  # mean 0 -> scale 1e5
    handles = gpu.ternarize_all([gpu.tensor(w) for w in ws])
    for w, h in zip(ws, handles):
        codes, s = ref.ternarize(w)
        close(np.array([h.weight_scale]), np.array([s]), 0.0, 1e-5, "absmean scale")
        want = np.clip(np.rint(w * h.weight_scale), -1, 1).astype(np.int8)
        np.testing.assert_array_equal(gpu.numpy(h.packed).view(np.uint32), pack_codes_2bit(want))
        assert h.shape == w.shape
        # and the codes equal the reference's except where w*s sits on a rounding boundary
        assert np.mean(want != codes) < 1e-3


def test_dequantize_act(gpu, close):
    x = (np.random.default_rng(1).standard_normal((7, 45)) * 4).astype(F32)
    xq, xs = ref.quantize_act(x)
    got = gpu.numpy(gpu.dequantize_act(gpu.tensor(xq), gpu.tensor(xs)))
    close(got, ref.dequantize_act(xq, xs), 0.0, 1e-6, "dequantize_act")


def test_reference_ternarize():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 12)).astype(np.float32)
    codes, s = ref.ternarize(w)
    assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 0, 1}
    assert s == np.float32(1.0) / np.float32(np.abs(w).mean(dtype=np.float64))
    with pytest.raises(ValueError, match="2-D"):
        ref.ternarize(w[0])


# ---------------------------------------------------------------- f16 STE input gradient
# bitlinear_backward_f16.wgsl against reference.bitlinear_backward_f16 (same semantics: per-row
# power-of-two scale, f16 rounding, f16 chunk sums in the same order, f32 chunk adds): the same
# bits up to the final f32 division (WGSL: 2.5 ulp) where the driver rounds f16 to nearest even
# (lavapipe, NVIDIA), so 4e-7 of |dx| as the forward's division (with acc: of the STE part,
# plus the add's rounding: measured on an H200, where fused adds differ). Against fp32: the
# first-order bound of reference.bitlinear_backward_f16 (u = 2^-11), plus the f16 subnormal
# spacing for elements far below their row's max.


def _f16_dy(rng, N, OUT):
    """dy with rows of every magnitude the f16 path must handle: 1e-8, 1e4, 1e-30, zero rows,
    and one row over 40 binades (f16 has 5 exponent bits: these need the per-row scale)."""
    dy = rnd(rng, N, OUT)
    for i, s in zip(range(N), (1e-8, 0.0, 1e4, 1e-30, 1.0)):
        dy[i] *= F32(s)
    if N > 5:
        dy[5] *= np.exp2(rng.integers(-20, 20, OUT)).astype(F32)
    return dy


def _f16_bound(dy, codes, ws, chunk):
    """Elementwise bound on |dx16 - dx| (float64): gamma * (|dy| @ |codes|) / ws plus, per row,
    OUT * 2^-(24 + TOP) * max|dy_n| / ws (f16 subnormals below 2^-14 of the scaled row)."""
    top = ref.ste_f16_top(chunk)
    u = 2.0 ** -11
    gamma = chunk * u + (-(-dy.shape[1] // chunk) + 3) * 2.0 ** -24
    a = np.abs(dy.astype(np.float64))
    sub = dy.shape[1] * 2.0 ** -(24 + top) * a.max(axis=1, initial=0.0)[:, None]
    return (gamma * (a @ np.abs(codes.astype(np.float64))) + sub) / float(ws)


@pytest.mark.parametrize("N,OUT,K,use_acc", [(1, 1, 1, False), (37, 70, 100, True),
                                             (6, 2560, 20, False), (200, 97, 260, True),
                                             (130, 33, 17, False)])
@pytest.mark.parametrize("tile", [64, 128])
@pytest.mark.parametrize("select_decode", [False, True])
def test_bitlinear_backward_f16_matches_reference(gpu, close, N, OUT, K, use_acc, tile,
                                                  select_decode):
    """Both tiles, both code decoders (SELECT_DECODE: the same f16 values)."""
    if "shader-f16" not in gpu.ctx.features:
        pytest.skip("adapter lacks shader-f16")
    rng = np.random.default_rng(21)
    dy, w = _f16_dy(rng, N, OUT), ternary(rng, OUT, K, ws=0.37)
    acc = rnd(rng, N, K) if use_acc else None
    gpu.bitlinear_bwd_tile, saved = tile, gpu.ste_select_decode
    gpu.ste_select_decode = select_decode
    try:
        got = gpu.numpy(gpu.bitlinear_backward_f16(gpu.tensor(dy), gpu.ternary(w),
                                                   None if acc is None else gpu.tensor(acc)))
    finally:
        gpu.bitlinear_bwd_tile, gpu.ste_select_decode = None, saved
    v = ref.bitlinear_backward_f16(dy, w.codes, w.weight_scale)
    want = v if acc is None else v + acc
    # the final division's 2.5 ulp are of v, and acc + v can cancel (NVIDIA may also fuse the
    # add): 4e-7 of |v| plus one f32 rounding of the sum
    close(got, want, 1e-45 + 4e-7 * np.abs(v) + (0 if acc is None else 2.0 ** -23 * np.abs(want)),
          0.0, "bitlinear_backward_f16 dx")
    exact = ref.bitlinear_backward(dy.astype(np.float64), w.codes, w.weight_scale)
    if acc is not None:
        exact = exact + acc
    err = np.abs(got.astype(np.float64) - exact)
    bound = _f16_bound(dy, w.codes, w.weight_scale, ref.STE_F16_CHUNK)
    if acc is not None:
        bound = bound + 2.0 ** -23 * np.abs(exact)
    assert np.all(err <= bound), f"max err/bound {np.max(err / np.maximum(bound, 1e-300)):.3f}"
    if N > 1:                                    # the zero row: exactly acc (or zero)
        np.testing.assert_array_equal(got[1], 0 if acc is None else acc[1])


@pytest.mark.parametrize("chunk", [16, 32, 64])
def test_bitlinear_backward_f16_chunks(gpu, close, chunk):
    """Each chunk length (override CH, TOP = 15 - log2 CH) against the reference, and the
    worst case of the overflow bound: a row at the top of its binade (2 - 2^-20, scaled to
    ~2^TOP, rounds to 2^TOP) with all codes +1 sums to exactly CH * 2^TOP = 2^15 per chunk:
    finite, and exact here."""
    if "shader-f16" not in gpu.ctx.features:
        pytest.skip("adapter lacks shader-f16")
    rng = np.random.default_rng(22)
    N, OUT, K = 70, 200, 48
    dy, w = _f16_dy(rng, N, OUT), ternary(rng, OUT, K, ws=1.3)
    dy[6] = F32(2 - 2 ** -20)
    w.codes[:, :16] = 1
    saved = gpu.ste_chunk
    gpu.ste_chunk = chunk
    try:
        got = gpu.numpy(gpu.bitlinear_backward_f16(gpu.tensor(dy), gpu.ternary(w)))
    finally:
        gpu.ste_chunk = saved
    want = ref.bitlinear_backward_f16(dy, w.codes, w.weight_scale, chunk=chunk)
    close(got, want, 1e-45, 4e-7, f"bitlinear_backward_f16 dx, chunk {chunk}")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[6, :16], 2 * OUT / F32(1.3), rtol=4e-7)
    exact = ref.bitlinear_backward(dy.astype(np.float64), w.codes, w.weight_scale)
    assert np.all(np.abs(got - exact) <= _f16_bound(dy, w.codes, w.weight_scale, chunk))


def test_reference_bitlinear_backward_f16():
    """The reference itself: the stated bound holds against float64 at a 2B-4T-like depth
    (OUT 2560: 80 chunks), its normwise error on random rows is ~1e-4-level (far under the
    worst case), scaling dy by any power of two scales dx exactly, and bad chunks raise."""
    rng = np.random.default_rng(23)
    dy, codes = _f16_dy(rng, 12, 2560), rng.integers(-1, 2, (2560, 40)).astype(np.int8)
    got = ref.bitlinear_backward_f16(dy, codes, 0.5)
    exact = ref.bitlinear_backward(dy.astype(np.float64), codes, 0.5)
    assert np.all(np.abs(got - exact) <= _f16_bound(dy, codes, 0.5, 32))
    ok = [i for i in range(12) if i not in (1, 3)]         # rows with a normal-range norm
    rel = np.linalg.norm(got[ok] - exact[ok], axis=1) / np.linalg.norm(exact[ok], axis=1)
    assert rel.max() < 2e-3, rel
    for p in (-40, 7, 60):
        np.testing.assert_array_equal(
            ref.bitlinear_backward_f16((dy[6:] * F32(2.0 ** p)).astype(F32), codes, 0.5),
            (got[6:] * F32(2.0 ** p)).astype(F32))
    assert ref.ste_row_exponents(np.zeros((2, 3), F32), 10).tolist() == [126, 126]
    with pytest.raises(ValueError, match="16, 32 or 64"):
        ref.bitlinear_backward_f16(dy, codes, 0.5, chunk=8)


def test_ste_precision_switch(gpu, monkeypatch):
    """BITSWARM_GPU_STE / GpuBackend(ste=...): f32 always; f16 only with shader-f16 (else f32);
    auto = f16 only on the adapters where it measured faster (an H200; the H100 shares its SM),
    i16 there when the runtime hides shader-f16 (Dawn on NVIDIA); other values raise. The f32 path stays what `bitlinear_backward` runs by default on
    lavapipe."""
    from bitswarm.kernels.gpu_backend import GpuBackend
    f16, none = {"shader-f16", "subgroup"}, {"subgroup"}
    nv = {"vendor_id": 0x10DE, "device": "NVIDIA H200"}
    rtx = {"vendor_id": 0x10DE, "device": "NVIDIA GeForce RTX 4090"}
    other = {"vendor_id": 0x10005, "device": "llvmpipe (LLVM 15.0.6, 256 bits)"}
    assert blg.ste_precision("f32", f16, nv) == "f32"
    assert blg.ste_precision("f16", f16, other) == "f16"
    assert blg.ste_precision("F16 ", none, nv) == "f32"
    assert blg.ste_precision("auto", none, nv) == "i16"
    assert blg.ste_precision("auto", none, rtx) == "f32"
    assert blg.ste_precision("auto", f16, other) == "f32"
    assert blg.ste_precision("auto", f16, rtx) == "f32"
    assert blg.ste_precision("auto", f16, nv) == "f16"
    h100 = {"vendor_id": 0x10DE, "device": "NVIDIA H100 80GB HBM3"}
    assert blg.ste_precision("auto", f16, h100) == "f16"
    monkeypatch.setenv("BITSWARM_GPU_STE", "f16")
    assert blg.ste_precision(None, f16, other) == "f16"
    assert blg.ste_precision(" I16", none, other) == "i16"      # dot4I8Packed: no feature needed
    assert blg.ste_precision("i8", f16, nv) == "i8"
    monkeypatch.setenv("BITSWARM_GPU_STE", "bf16")
    with pytest.raises(ValueError, match="auto, f32, f16, i16, i8"):
        blg.ste_precision(None, f16, nv)
    with pytest.raises(ValueError, match="auto, f32, f16, i16, i8"):
        GpuBackend(gpu.ctx)
    monkeypatch.delenv("BITSWARM_GPU_STE")
    has = "shader-f16" in gpu.ctx.features
    assert GpuBackend(gpu.ctx, ste="f16").ste_precision == ("f16" if has else "f32")
    assert GpuBackend(gpu.ctx, ste="f32").ste_precision == "f32"
    assert GpuBackend(gpu.ctx).ste_precision == blg.ste_precision("auto", gpu.ctx.features,
                                                                  gpu.ctx.info)
    if has:   # the switch routes bitlinear_backward: 2 launches (rows + main) instead of 1
        rng = np.random.default_rng(24)
        be = GpuBackend(gpu.ctx, ste="f16")
        dy, w = rnd(rng, 9, 40), ternary(rng, 40, 30)
        n0 = gpu.ctx.n_dispatches
        got = be.numpy(be.bitlinear_backward(be.tensor(dy), be.ternary(w)))
        assert gpu.ctx.n_dispatches == n0 + 2
        np.testing.assert_allclose(got, ref.bitlinear_backward_f16(dy, w.codes, w.weight_scale),
                                   rtol=4e-7)


# ---------------------------------------------------------------- int STE input gradient
# bitlinear_backward_int.wgsl against reference.bitlinear_backward_int: the int32 sums exactly
# (INT_OUT; they fix q, so the rows pass's exponents, rounding and two-term split too), dx to
# the final f32 division's 2.5 ulp. Against fp32: the reference's worst-case bound.


def _int_dy(rng, N, OUT):
    """_f16_dy's rows plus exact .5 ties after scaling (max 1.0 -> scale 2^13 at TOP 14, 2^6 at
    TOP 7) and a row at the clamp (2 - 2^-20 rounds to 2^TOP)."""
    dy = _f16_dy(rng, N, OUT)
    if N > 7:
        dy[6] = F32(1.0)
        dy[6, 1::3] = ((rng.integers(-300, 300, dy[6, 1::3].shape) + 0.5) / 2.0 ** 6).astype(F32)
        dy[7] = F32(2 - 2 ** -20) * rng.choice([-1, 1], OUT).astype(F32)
    return dy


@pytest.mark.parametrize("N,OUT,K", [(1, 1, 1), (37, 70, 100), (6, 2560, 20), (200, 97, 260),
                                     (130, 33, 17), (9, 6912, 70)])
@pytest.mark.parametrize("tile", [64, 128])
@pytest.mark.parametrize("terms", [1, 2])
@pytest.mark.parametrize("splits", [1, 3])
def test_bitlinear_backward_int_sums_exact(gpu, N, OUT, K, tile, terms, splits):
    """Both tiles, both term counts, unsplit and in slabs over OUT (3 asked; clamped to the o
    steps there are), edges off every tile and step size: the same int32 sums."""
    rng = np.random.default_rng(31)
    dy, w = _int_dy(rng, N, OUT), ternary(rng, OUT, K, ws=0.37)
    gpu.bitlinear_bwd_tile, gpu.ste_int_splits = tile, splits
    try:
        got = gpu.numpy(gpu.bitlinear_backward_int(gpu.tensor(dy), gpu.ternary(w), terms=terms,
                                                   int_out=True))
    finally:
        gpu.bitlinear_bwd_tile, gpu.ste_int_splits = None, None
    np.testing.assert_array_equal(got, ref.bitlinear_backward_int(dy, w.codes, w.weight_scale,
                                                                  terms, int_out=True))


def test_ste_int_plan():
    """Slabs over OUT: forced counts clamp to the o steps with none empty; the auto rule splits
    only below STE_INT_SPLIT_BELOW tiles, each slab >= STE_INT_MIN_OUT of OUT."""
    class Be:
        ste_int_splits = None
    be = Be()
    be.ste_int_splits = 4
    assert blg.ste_int_plan(be, 512, 2560, 2560, 128) == (4, 20)     # 80 steps of 32 o
    assert blg.ste_int_plan(be, 512, 2560, 100, 64) == (2, 1)        # 2 steps of 64 o
    be.ste_int_splits = 3
    assert blg.ste_int_plan(be, 512, 2560, 2560, 64) == (3, 14)      # 40 steps: 14 + 14 + 12
    be.ste_int_splits = None
    saved = blg.STE_INT_SPLIT_BELOW
    try:
        blg.STE_INT_SPLIT_BELOW = 264
        assert blg.ste_int_plan(be, 512, 2560, 2560, 128) == (4, 20)  # 80 tiles -> 4 slabs
        assert blg.ste_int_plan(be, 512, 2560, 640, 128) == (1, 20)   # 640 o: one slab >= 512
        assert blg.ste_int_plan(be, 2048, 2560, 2560, 128) == (1, 80)  # 320 tiles: unsplit
        blg.STE_INT_SPLIT_BELOW = 0
        assert blg.ste_int_plan(be, 512, 2560, 2560, 128) == (1, 80)
    finally:
        blg.STE_INT_SPLIT_BELOW = saved


@pytest.mark.parametrize("N,OUT,K,use_acc", [(37, 70, 100, True), (200, 97, 260, False),
                                             (130, 2560, 40, True)])
@pytest.mark.parametrize("tile", [64, 128])
@pytest.mark.parametrize("terms", [1, 2])
@pytest.mark.parametrize("splits", [1, 2])
def test_bitlinear_backward_int_matches_reference(gpu, close, N, OUT, K, use_acc, tile, terms,
                                                  splits):
    """dx (and dx + acc) against the reference to the division's ulps, within the stated
    bound of the exact fp64 gradient, unsplit and through the slab reduce; zero rows give
    exactly acc."""
    rng = np.random.default_rng(32)
    dy, w = _int_dy(rng, N, OUT), ternary(rng, OUT, K, ws=0.37)
    acc = rnd(rng, N, K) if use_acc else None
    gpu.bitlinear_bwd_tile, gpu.ste_int_splits = tile, splits
    try:
        got = gpu.numpy(gpu.bitlinear_backward_int(gpu.tensor(dy), gpu.ternary(w),
                                                   None if acc is None else gpu.tensor(acc),
                                                   terms=terms))
    finally:
        gpu.bitlinear_bwd_tile, gpu.ste_int_splits = None, None
    v = ref.bitlinear_backward_int(dy, w.codes, w.weight_scale, terms)
    want = v if acc is None else v + acc
    close(got, want, 1e-45 + 4e-7 * np.abs(v) + (0 if acc is None else 2.0 ** -23 * np.abs(want)),
          0.0, f"bitlinear_backward_int dx, terms {terms}")
    exact = ref.bitlinear_backward(dy.astype(np.float64), w.codes, w.weight_scale)
    if acc is not None:
        exact = exact + acc
    top = ref.STE_INT_TOP[terms]
    a = np.abs(dy.astype(np.float64)).max(axis=1)[:, None]
    bound = (2.0 ** -top * a * np.abs(w.codes).sum(axis=0)[None, :] / w.weight_scale
             + 4e-7 * np.abs(exact) + (0 if acc is None else 2.0 ** -23 * np.abs(exact)))
    assert np.all(np.abs(got - exact) <= bound)
    np.testing.assert_array_equal(got[1], 0 if acc is None else acc[1])


def test_reference_bitlinear_backward_int():
    """The reference itself: q's range and ties (half to even), the two-term split recombines
    exactly within int8, the error bound holds against fp64 at a 2B-4T depth with a typical
    normwise error far below it (i16 ~1e-5, i8 ~1e-2), powers of two scale dx exactly, and bad
    terms raise."""
    rng = np.random.default_rng(33)
    dy = _int_dy(rng, 12, 2560)
    codes = rng.integers(-1, 2, (2560, 40)).astype(np.int8)
    for terms, top, tol in ((1, 7, 3e-2), (2, 14, 3e-4)):
        q, rs = ref.ste_int_quantize(dy, terms)
        assert q.dtype == np.int32 and np.abs(q).max() == 2 ** top - 1       # row 7: clamped
        assert np.abs(q[np.abs(dy).max(axis=1) > 0]).max(axis=1).min() >= 2 ** (top - 1) - 1
        got = ref.bitlinear_backward_int(dy, codes, 0.5, terms)
        exact = ref.bitlinear_backward(dy.astype(np.float64), codes, 0.5)
        a = np.abs(dy.astype(np.float64)).max(axis=1)[:, None]
        assert np.all(np.abs(got - exact)
                      <= 2.0 ** -top * a * np.abs(codes).sum(axis=0) / 0.5 + 4e-7 * np.abs(exact))
        ok = [i for i in range(12) if i not in (1, 3)]
        rel = np.linalg.norm(got[ok] - exact[ok], axis=1) / np.linalg.norm(exact[ok], axis=1)
        assert rel.max() < tol, (terms, rel)
        for p in (-40, 7, 60):
            np.testing.assert_array_equal(
                ref.bitlinear_backward_int((dy[6:] * F32(2.0 ** p)).astype(F32), codes, 0.5, terms),
                (got[6:] * F32(2.0 ** p)).astype(F32))
    q, _ = ref.ste_int_quantize(np.array([[1.0, 0.5 / 64, 1.5 / 64, -2.5 / 64, 0.0]], F32), 1)
    assert q.tolist() == [[64, 0, 2, -2, 0]]                  # TOP 7: max 1.0 -> scale 2^6
    q = np.arange(-16383, 16384, dtype=np.int32)
    hi, lo = ref.ste_int_split(q)
    assert hi.min() == -64 and hi.max() == 64
    np.testing.assert_array_equal(256 * hi.astype(np.int32) + lo, q)
    with pytest.raises(ValueError, match="1 or 2"):
        ref.ste_int_quantize(dy, 3)


def test_ste_int_routes_and_agrees(gpu):
    """GpuBackend(ste="i16"/"i8") runs bitlinear_backward on the int kernel: 2 launches (rows +
    main), the reference's values."""
    from bitswarm.kernels.gpu_backend import GpuBackend
    rng = np.random.default_rng(34)
    dy, w = rnd(rng, 9, 40), ternary(rng, 40, 30)
    for prec, terms in (("i16", 2), ("i8", 1)):
        be = GpuBackend(gpu.ctx, ste=prec)
        assert be.ste_precision == prec and f"STE input gradient {prec}" in be.device_info
        n0 = gpu.ctx.n_dispatches
        got = be.numpy(be.bitlinear_backward(be.tensor(dy), be.ternary(w)))
        assert gpu.ctx.n_dispatches == n0 + 2
        np.testing.assert_allclose(got, ref.bitlinear_backward_int(dy, w.codes, w.weight_scale,
                                                                   terms), rtol=4e-7)


def test_bitlinear_tc_shader_is_its_generators_output():
    """bitlinear_tc.wgsl is written by bitlinear_tc_gen.py (WGSL has no macros); the committed
    file must be what the generator writes."""
    from bitswarm.kernels.ops import registry
    from bitswarm.kernels.ops.bitlinear import bitlinear_tc_gen
    assert registry.shader_source("bitlinear", "bitlinear_tc.wgsl") == bitlinear_tc_gen.source()


@pytest.mark.parametrize("N,K,OUT", [(17, 64, 33), (130, 128, 200), (300, 2560, 700),
                                     (256, 6912, 384)])
def test_bitlinear_tc_matches_reference(gpu, N, K, OUT):
    """The forward on int8 tensor cores (bitlinear_tc.wgsl, Dawn subgroup matrices): the int32
    core equals the reference exactly, the f32 outputs and a q/k/v group's three outputs are
    bit-identical to the dot4I8Packed kernels', on ragged N and OUT. Runs where the device
    has the i8 16x16x32 configuration (Dawn on an H200); elsewhere skipped."""
    saved, gpu.bitlinear_tc = gpu.bitlinear_tc, True
    try:
        ok = blg.bitlinear_tc_ok(gpu, N, K, OUT)
    finally:
        gpu.bitlinear_tc = saved
    if not ok:
        pytest.skip("no int8 16x16x32 subgroup matrix configuration (Dawn) on this device")
    rng = np.random.default_rng(21)
    xq = rng.integers(-128, 128, (N, K)).astype(np.int8)
    xs = rng.uniform(0.01, 2.0, N).astype(F32)
    outs = [OUT, OUT // 3 + 1, 48]
    ws = [ternary(rng, o, K, ws=0.3 + 0.2 * j) for j, o in enumerate(outs)]
    gx, gs = gpu.tensor(xq), gpu.tensor(xs)
    group = gpu.ternary_group(ws)
    got, saved = {}, gpu.bitlinear_tc
    for tc in (True, False):
        gpu.bitlinear_tc = tc
        try:
            before = gpu.ctx.n_dispatches
            got[tc] = dict(int=gpu.numpy(gpu.bitlinear_int(gx, gpu.ternary(ws[0]))),
                           f32=gpu.numpy(gpu.bitlinear(gx, gs, gpu.ternary(ws[0]))),
                           group=[gpu.numpy(y) for y in gpu.bitlinear_group(gx, gs, group)])
            assert gpu.ctx.n_dispatches == before + 3
        finally:
            gpu.bitlinear_tc = saved
    np.testing.assert_array_equal(got[True]["int"], ref.bitlinear_int(xq, ws[0].codes))
    np.testing.assert_array_equal(got[True]["f32"].view(np.int32), got[False]["f32"].view(np.int32))
    for a, b in zip(got[True]["group"], got[False]["group"]):
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
    want = ref.bitlinear(xq, xs, ws[0].codes, ws[0].weight_scale)
    assert np.max(np.abs(got[True]["f32"] - want)) <= 4e-7 * np.max(np.abs(want))


def test_backward_tc_shaders_are_their_generators_output():
    """bitlinear_backward_tc_i8.wgsl / _i16.wgsl are written by bitlinear_tc_gen.py too."""
    from bitswarm.kernels.ops import registry
    from bitswarm.kernels.ops.bitlinear import bitlinear_tc_gen
    for terms, tag in ((1, "i8"), (2, "i16")):
        assert (registry.shader_source("bitlinear", f"bitlinear_backward_tc_{tag}.wgsl")
                == bitlinear_tc_gen.backward_source(terms))


def test_tensor_core_rules():
    """Where the forward (bitlinear_tc_ok) and the int STE (ste_tc_ok) take the tensor cores:
    only with the i8 16x16x32 configuration at subgroup size exactly 32 and enough workgroup
    memory; K (forward) / OUT (STE) multiples of 64; by default from 2,048 (forward) / 512
    (STE) tokens with >= 128 workgroup tiles; True forces, False forbids."""
    from types import SimpleNamespace
    cfg = dict(component_type="i8", result_component_type="i32", m=16, n=16, k=32,
               min_subgroup_size=32, max_subgroup_size=32)
    ctx = SimpleNamespace(subgroup_matrix_configs=[cfg],
                          limits={"max-compute-workgroup-storage-size": 32768})
    be = SimpleNamespace(ctx=ctx, bitlinear_tc=None, ste_tc=None)
    assert blg.bitlinear_tc_ok(be, 2048, 2560, 2560)                 # 16 x 20 tiles
    assert not blg.bitlinear_tc_ok(be, 512, 2560, 6912)              # below TC_MIN_N
    assert not blg.bitlinear_tc_ok(be, 2048, 2560 + 32, 2560)        # K not a multiple of 64
    assert blg.ste_tc_ok(be, 2048, 2560, 2560, 1) and blg.ste_tc_ok(be, 2048, 2560, 640, 2)
    assert not blg.ste_tc_ok(be, 2048, 2560, 2560 + 16, 2)          # OUT not a multiple of 64
    assert not blg.ste_tc_ok(be, 256, 2560, 2560, 2)                 # below STE_TC_MIN_N
    assert blg.ste_tc_ok(be, 512, 2560, 2560, 2)                     # 40 x 4 i16 tiles
    assert not blg.ste_tc_ok(be, 512, 2560, 2560, 1)                 # 20 x 4 i8 tiles < 128
    assert not blg.ste_tc_ok(be, 2048, 640, 2560, 1)                 # 5 x 16 tiles < 128
    assert blg.ste_tc_ok(be, 2048, 1024, 2560, 2)                    # 16 x 16 i16 tiles
    be.ste_tc = True
    assert blg.ste_tc_ok(be, 17, 40, 64, 1)                          # forced: any N, K
    be.ste_tc, be.bitlinear_tc = False, True
    assert not blg.ste_tc_ok(be, 2048, 2560, 2560, 2) and blg.bitlinear_tc_ok(be, 17, 64, 33)
    be.ste_tc = True
    ctx.limits["max-compute-workgroup-storage-size"] = 20480         # i16 needs 25,600 bytes
    assert blg.ste_tc_ok(be, 17, 40, 64, 1) and not blg.ste_tc_ok(be, 17, 40, 64, 2)
    ctx.limits["max-compute-workgroup-storage-size"] = 32768
    for bad in (dict(max_subgroup_size=64), dict(component_type="u8"), dict(k=16)):
        ctx.subgroup_matrix_configs = [{**cfg, **bad}]
        assert not blg.ste_tc_ok(be, 2048, 2560, 2560, 1)
        assert not blg.bitlinear_tc_ok(be, 2048, 2560, 2560)


@pytest.mark.parametrize("N,OUT,K,use_acc", [(17, 64, 40, True), (130, 128, 200, False),
                                             (300, 640, 2560, True), (200, 2560, 700, False)])
@pytest.mark.parametrize("terms", [1, 2])
def test_bitlinear_backward_tc_matches_reference(gpu, N, OUT, K, use_acc, terms):
    """The int STE on int8 tensor cores (bitlinear_backward_tc_*.wgsl): the exact int32 sums
    equal the reference's q @ codes, dx is bit-identical to the dot4I8Packed kernel's, and
    dx + acc within one rounding of the add (a driver may fuse the scaling and the add into
    one FMA in one shader and not the other: on an H200, 2B-4T shapes with acc differed by
    <= 1 ulp of the addends in ~27% of elements; benchmarks/ste_tc_check.py), on ragged N and
    K. Runs where the device has the i8 16x16x32 configuration (Dawn on an H200); elsewhere
    skipped."""
    saved = gpu.ste_tc
    gpu.ste_tc = True
    try:
        ok = blg.ste_tc_ok(gpu, N, K, OUT, terms)
    finally:
        gpu.ste_tc = saved
    if not ok:
        pytest.skip("no int8 16x16x32 subgroup matrix configuration (Dawn) on this device")
    rng = np.random.default_rng(35)
    dy, w = _int_dy(rng, N, OUT), ternary(rng, OUT, K, ws=0.37)
    acc = rnd(rng, N, K) if use_acc else None
    gd, gw = gpu.tensor(dy), gpu.ternary(w)
    got = {}
    for tc in (True, False):
        gpu.ste_tc = tc
        try:
            before = gpu.ctx.n_dispatches
            got[tc] = dict(
                int=gpu.numpy(gpu.bitlinear_backward_int(gd, gw, terms=terms, int_out=True)),
                dx=gpu.numpy(gpu.bitlinear_backward_int(
                    gd, gw, None if acc is None else gpu.tensor(acc), terms=terms)))
            if tc:
                assert gpu.ctx.n_dispatches == before + 4          # (rows + tc) twice
        finally:
            gpu.ste_tc = saved
    q, _ = ref.ste_int_quantize(dy, terms)
    np.testing.assert_array_equal(got[True]["int"], q.astype(np.int64) @ w.codes.astype(np.int64))
    a, b = got[True]["dx"], got[False]["dx"]
    if acc is None:
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
    else:
        v = ref.bitlinear_backward_int(dy, w.codes, w.weight_scale, terms)
        assert np.all(np.abs(a - b) <= 2.0 ** -23 * (np.abs(acc) + np.abs(v) + np.abs(b)))
