"""Every GpuBackend op (WGSL on wgpu; lavapipe on CI) against kernels/reference.py.

Integer paths are checked EXACTLY: quantize_act's int8 values and x_scale bits, the bitlinear
int32 accumulator. Float paths use `close(got, ref, atol, rtol)` (|err| <= atol + rtol*|ref|)
with the tolerance stated at each call: fp32 sums in a different order than NumPy's, and WGSL
exp/log/sqrt/division are accurate to a few ulp, not correctly rounded.
Shapes are awkward on purpose: not multiples of the workgroup/tile sizes, T = 1, N = 1, large
activations.
"""
from __future__ import annotations

import gc
import inspect

import numpy as np
import pytest

from bitswarm.kernels import reference as ref
from bitswarm.kernels import gpu_backend as gb
from bitswarm.kernels import registry
from bitswarm.kernels.backend import Backend, CpuBackend
from bitswarm.kernels.config import TernaryLinear

F32 = np.float32


def rnd(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def ternary(rng, out, k, ws=1.7):
    return TernaryLinear(rng.integers(-1, 2, (out, k)).astype(np.int8), F32(ws))


# ---------------------------------------------------------------- plumbing
def test_roundtrip_dtypes_and_zeros(gpu):
    rng = np.random.default_rng(0)
    a = rnd(rng, 3, 5)
    i = rng.integers(-5, 5, 7).astype(np.int32)
    q = rng.integers(-128, 128, (3, 7)).astype(np.int8)
    np.testing.assert_array_equal(gpu.numpy(gpu.tensor(a)), a)
    np.testing.assert_array_equal(gpu.numpy(gpu.tensor(i)), i)
    np.testing.assert_array_equal(gpu.numpy(gpu.tensor(q)), q)
    z = gpu.zeros_like(gpu.tensor(a))
    np.testing.assert_array_equal(gpu.numpy(z), np.zeros_like(a))


def test_registry_covers_backend_and_shaders_load():
    ops = [n for n, _ in inspect.getmembers(Backend, inspect.isfunction)
           if not n.startswith("_") and n not in ("tensor", "ternary", "ternary_group", "table", "numpy",
                                                  "zeros_like", "release_workspace")]
    assert len(ops) == 17, ops
    for op in ops:
        spec = registry.spec(op)
        src = registry.shader_source(spec.shader)
        for e in spec.entries:
            assert f"fn {e}(" in src, (op, e)
        assert spec.reference is getattr(ref, op)


def test_device_error_names_the_shader(gpu):
    from bitswarm.kernels.device import DeviceError
    with pytest.raises(DeviceError, match="broken.wgsl"):
        gpu.ctx.kernel("broken", lambda: "fn main( {", "main")


def test_buffers_are_recycled(gpu):
    rng = np.random.default_rng(1)
    x, w = gpu.tensor(rnd(rng, 9, 33)), gpu.tensor(rnd(rng, 33))

    def step():
        y, r = gpu.rmsnorm(x, w, 1e-5)
        z = gpu.add(y, y)
        gpu.numpy(z)

    step()
    gc.collect()
    before = gpu.ctx.n_buffers_created
    for _ in range(5):
        step()
        gc.collect()
    assert gpu.ctx.n_buffers_created == before


# ---------------------------------------------------------------- embedding / norms
def test_embedding(gpu, close):
    rng = np.random.default_rng(2)
    table = rnd(rng, 50, 33)
    for ids in (np.array([7], np.int32), rng.integers(-50, 50, 37).astype(np.int32)):
        got = gpu.numpy(gpu.embedding(gpu.tensor(ids), gpu.tensor(table)))
        np.testing.assert_array_equal(got, ref.embedding(ids, table))      # a copy: exact
    with pytest.raises(IndexError):
        gpu.embedding(gpu.tensor(np.array([50], np.int32)), gpu.tensor(table))


@pytest.mark.parametrize("N,C,scale", [(1, 7, 1.0), (37, 300, 1.0), (5, 1000, 1e4), (3, 64, 1e-3)])
def test_rmsnorm_forward_backward(gpu, close, N, C, scale):
    rng = np.random.default_rng(3)
    x, w, dy = rnd(rng, N, C, scale=scale), 1 + rnd(rng, C, scale=0.1), rnd(rng, N, C)
    y, rstd = gpu.rmsnorm(gpu.tensor(x), gpu.tensor(w), 1e-5)
    ry, rr = ref.rmsnorm(x, w, 1e-5)
    close(gpu.numpy(y), ry, 1e-6, 2e-6, "rmsnorm y")
    close(gpu.numpy(rstd), rr, 0, 2e-6, "rmsnorm rstd")
    dx = gpu.rmsnorm_backward(gpu.tensor(dy), gpu.tensor(x), gpu.tensor(w), rstd)
    rdx = ref.rmsnorm_backward(dy, x, w, rr)
    close(gpu.numpy(dx), rdx, 1e-5 * np.abs(rdx).max(), 1e-5, "rmsnorm_backward dx")


# ---------------------------------------------------------------- W1.58A8
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
    """Tile rows 64 and 32 (bitlinear_tm) x K steps of 64 and of 128 int8 (bitlinear_kw 16, 32)
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
    saved_wgs, saved_tm32 = gb._BITLINEAR_MIN_WGS, gb._BITLINEAR_TM32_BELOW
    try:
        ys = {}
        for tm in (64, 32):
            for kw in (16, 32):
                for splits in (1, 2, 3, None):
                    gpu.bitlinear_splits, gpu.bitlinear_kw, gpu.bitlinear_tm = splits, kw, tm
                    np.testing.assert_array_equal(
                        gpu.numpy(gpu.bitlinear_int(gx, gw)), want_i,
                        err_msg=f"int32 core, tm={tm} kw={kw} splits={splits}")
                    ys[tm, kw, splits] = gpu.numpy(gpu.bitlinear(gx, gs, gw))
        gpu.bitlinear_splits, gpu.bitlinear_kw, gpu.bitlinear_tm = None, 16, None
        assert gpu.bitlinear_tile_rows(512, 640) == 64            # default: 64-row tiles
        gb._BITLINEAR_TM32_BELOW = 264                             # the heuristic switched on
        assert gpu.bitlinear_tile_rows(512, 640) == 32            # k/v at 2B-4T: 80 tiles
        assert gpu.bitlinear_tile_rows(512, 2560) == 64           # q/o at 2B-4T: 320 tiles
        assert gpu.bitlinear_tile_rows(N, OUT) == 32              # these shapes: 32
        assert gpu.bitlinear_plan(2, 2560, 17) == (1, 40)         # default: unsplit
        gb._BITLINEAR_MIN_WGS = 512                                # the heuristic switched on
        assert gpu.bitlinear_plan(2, 2560, 17) == (5, 8)          # 40 K steps, 8 per slab
        assert gpu.bitlinear_plan(512, 2560, 6912)[0] == 1        # gate/up: 864 tiles
        np.testing.assert_array_equal(gpu.numpy(gpu.bitlinear_int(gx, gw)), want_i,
                                      err_msg="int32 core, heuristic on")
    finally:
        gpu.bitlinear_splits, gpu.bitlinear_kw, gpu.bitlinear_tm = saved
        gb._BITLINEAR_MIN_WGS, gb._BITLINEAR_TM32_BELOW = saved_wgs, saved_tm32
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
        dy = rnd(rng, N, w.codes.shape[0])
        np.testing.assert_array_equal(gpu.numpy(gpu.bitlinear_backward(gpu.tensor(dy), g)),
                                      gpu.numpy(gpu.bitlinear_backward(gpu.tensor(dy),
                                                                       gpu.ternary(w))))
    with pytest.raises(ValueError, match="input widths"):
        gpu.ternary_group([ternary(rng, 4, K), ternary(rng, 4, K + 1)])


@pytest.mark.parametrize("N,OUT,K,use_acc", [(1, 1, 1, False), (37, 70, 100, True),
                                             (65, 129, 300, False), (3, 2560, 20, True)])
def test_bitlinear_backward(gpu, close, N, OUT, K, use_acc):
    rng = np.random.default_rng(7)
    dy, w = rnd(rng, N, OUT), ternary(rng, OUT, K, ws=0.37)
    acc = rnd(rng, N, K) if use_acc else None
    got = gpu.numpy(gpu.bitlinear_backward(gpu.tensor(dy), gpu.ternary(w),
                                           None if acc is None else gpu.tensor(acc)))
    want = ref.bitlinear_backward(dy, w.codes, w.weight_scale) + (0 if acc is None else acc)
    # fp32 sum of OUT terms in another order: error ~ eps * sqrt(OUT) * |terms|
    close(got, want, 2e-6 * np.sqrt(OUT) / w.weight_scale, 1e-5, "bitlinear_backward dx")


# ---------------------------------------------------------------- dense
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,K,N,alpha,use_acc", [(1, 1, 1, 1.0, False), (33, 70, 45, 2.0, True),
                                                 (65, 17, 129, 1.0, False), (37, 64, 8, 0.5, True),
                                                 # split-K path (few output tiles, long K)
                                                 (37, 1000, 8, 0.5, True), (5, 777, 3, 1.0, False)])
def test_matmul(gpu, close, trans_a, trans_b, M, K, N, alpha, use_acc):
    rng = np.random.default_rng(8)
    a = rnd(rng, *((K, M) if trans_a else (M, K)))
    b = rnd(rng, *((N, K) if trans_b else (K, N)))
    acc = rnd(rng, M, N) if use_acc else None
    got = gpu.numpy(gpu.matmul(gpu.tensor(a), gpu.tensor(b), trans_a=trans_a, trans_b=trans_b,
                               alpha=alpha, acc=None if acc is None else gpu.tensor(acc)))
    want = ref.matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, acc=acc)
    close(got, want, 2e-6 * np.sqrt(K) * alpha, 1e-5, f"matmul ta={trans_a} tb={trans_b}")


def test_add_and_relu2_gate(gpu, close):
    rng = np.random.default_rng(9)
    for shape in ((1, 1), (37, 300)):
        a, b, dh = rnd(rng, *shape, scale=100), rnd(rng, *shape), rnd(rng, *shape)
        ta, tb = gpu.tensor(a), gpu.tensor(b)
        np.testing.assert_array_equal(gpu.numpy(gpu.add(ta, tb)), ref.add(a, b))  # one rounding
        close(gpu.numpy(gpu.relu2_gate(ta, tb)), ref.relu2_gate(a, b), 0, 1e-6, "relu2_gate")
        dg, du = gpu.relu2_gate_backward(gpu.tensor(dh), ta, tb)
        rdg, rdu = ref.relu2_gate_backward(dh, a, b)
        close(gpu.numpy(dg), rdg, 0, 1e-6, "relu2_gate dg")
        close(gpu.numpy(du), rdu, 0, 1e-6, "relu2_gate du")


# ---------------------------------------------------------------- RoPE
@pytest.mark.parametrize("B,T,H,hd,theta", [(1, 1, 1, 2, 10000.0), (3, 7, 3, 8, 10000.0),
                                             (1, 300, 2, 128, 500000.0)])
def test_rope_and_inverse(gpu, close, B, T, H, hd, theta):
    rng = np.random.default_rng(10)
    x = rnd(rng, B * T, H * hd)
    cos, sin = ref.rope_tables(max(T, 128), hd, theta)
    y = gpu.rope(gpu.tensor(x), T, H, hd, theta)
    close(gpu.numpy(y), ref.rope(x, cos, sin, T, H, hd), 1e-6, 1e-6, "rope")
    back = gpu.rope(y, T, H, hd, theta, inverse=True)
    close(gpu.numpy(back), ref.rope(ref.rope(x, cos, sin, T, H, hd), cos, sin, T, H, hd, True),
          1e-6, 1e-6, "rope inverse")
    close(gpu.numpy(back), x, 1e-5, 1e-5, "rope roundtrip")


# ---------------------------------------------------------------- attention
# attention.wgsl tiles 32 query rows x 32 keys and splits head dims over 16 invocations of
# vec4s: the shapes cover T below, at and past a block (1, 5, 37, 128, 300), GQA ratios 1, 2,
# 3, 4, head dims 16, 64, 128, 256, one not a multiple of 16 (20) and one of 4 (6, the
# per-component path), and B > 1.
@pytest.mark.parametrize("B,T,Hq,Hkv,hd,scale", [
    (1, 1, 1, 1, 16, 1.0), (2, 5, 4, 1, 16, 1.0), (2, 37, 2, 2, 64, 1.0), (1, 128, 4, 1, 128, 1.0),
    (1, 37, 2, 1, 256, 1.0), (1, 67, 3, 1, 20, 4.0), (2, 9, 4, 2, 6, 1.0), (1, 300, 2, 1, 16, 1.0)])
def test_attention_forward_backward(gpu, close, B, T, Hq, Hkv, hd, scale):
    rng = np.random.default_rng(11)
    q, k, v = rnd(rng, B * T, Hq * hd, scale=scale), rnd(rng, B * T, Hkv * hd, scale=scale), \
        rnd(rng, B * T, Hkv * hd)
    do = rnd(rng, B * T, Hq * hd)
    tq, tk, tv = gpu.tensor(q), gpu.tensor(k), gpu.tensor(v)
    o, lse = gpu.attention(tq, tk, tv, B, T, Hq, Hkv, hd)
    ro, rl = ref.attention(q, k, v, B, T, Hq, Hkv, hd)
    # exp of scores |S| ~ scale^2 * sqrt(hd) carries ~|S| ulp of error
    s2 = scale * scale
    go, gl = gpu.numpy(o), gpu.numpy(lse)
    close(go, ro, 2e-6 * s2, 1e-5 * s2, "attention o")
    close(gl, rl, 2e-6 * s2, 1e-6 * s2, "attention lse")
    dq, dk, dv = gpu.attention_backward(gpu.tensor(do), tq, tk, tv, o, lse, B, T, Hq, Hkv, hd)
    rdq, rdk, rdv = ref.attention_backward(do, q, k, v, ro, rl, B, T, Hq, Hkv, hd)
    got = {"o": (go, ro), "lse": (gl, rl)}
    for name, g, r in (("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv)):
        got[name] = (gpu.numpy(g), r)
        close(got[name][0], r, 1e-5 * s2 * max(1.0, np.abs(r).max()), 1e-4 * s2,
              f"attention {name}")
    for name, (g, r) in got.items():   # normwise, against max(1, max|ref|) (T=1: dq is ~0)
        err = float(np.abs(g.astype(np.float64) - r).max()) / max(1.0, float(np.abs(r).max()))
        assert err <= 1e-5 * s2, f"attention {name}: normwise error {err:.2e}"


def test_attention_backward_is_deterministic(gpu):
    """No float atomics: two runs give bitwise identical gradients."""
    rng = np.random.default_rng(16)
    B, T, Hq, Hkv, hd = 2, 70, 4, 1, 32
    q, k, v = rnd(rng, B * T, Hq * hd), rnd(rng, B * T, Hkv * hd), rnd(rng, B * T, Hkv * hd)
    t = [gpu.tensor(a) for a in (rnd(rng, B * T, Hq * hd), q, k, v)]
    o, lse = gpu.attention(*t[1:], B, T, Hq, Hkv, hd)
    runs = [[gpu.numpy(g) for g in gpu.attention_backward(*t, o, lse, B, T, Hq, Hkv, hd)]
            for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_attention_rejects_bad_shapes(gpu):
    x = gpu.tensor(np.zeros((4, 2 * 257), F32))
    with pytest.raises(ValueError, match="head_dim=257"):
        gpu.attention(x, x, x, 1, 4, 2, 2, 257)
    y = gpu.tensor(np.zeros((4, 24), F32))
    with pytest.raises(ValueError, match="Hq=3 not a multiple of Hkv=2"):
        gpu.attention(y, y, y, 1, 4, 3, 2, 8)


def test_attention_long_sequence(gpu, close):
    """T past the old 2048 limit: nothing in the kernels scales with T."""
    rng = np.random.default_rng(17)
    B, T, Hq, Hkv, hd = 1, 2085, 1, 1, 4
    q, k, v = rnd(rng, T, hd), rnd(rng, T, hd), rnd(rng, T, hd)
    o, lse = gpu.attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), B, T, Hq, Hkv, hd)
    ro, rl = ref.attention(q, k, v, B, T, Hq, Hkv, hd)
    close(gpu.numpy(o), ro, 2e-6, 1e-5, "attention o T=2085")
    close(gpu.numpy(lse), rl, 2e-6, 1e-6, "attention lse T=2085")


# ---------------------------------------------------------------- loss / optimizer
@pytest.mark.parametrize("N,V,scale", [(1, 1, 1.0), (6, 1000, 1.0), (4, 300, 50.0)])
def test_cross_entropy(gpu, close, N, V, scale):
    rng = np.random.default_rng(12)
    logits = rnd(rng, N, V, scale=scale)
    t = rng.integers(0, V, N).astype(np.int32)
    t[::3] = -1 if N > 1 else t[::3]          # padding rows
    loss, d = gpu.cross_entropy(gpu.tensor(logits), gpu.tensor(t), 1.0 / 3)
    rloss, rd = ref.cross_entropy(logits, t, 1.0 / 3)
    close(gpu.numpy(loss), rloss, 1e-5 * max(1.0, scale), 1e-5, "cross_entropy loss")
    close(gpu.numpy(d), rd, 1e-7, 1e-5, "cross_entropy dlogits")


def test_adamw(gpu, close):
    rng = np.random.default_rng(13)
    p, m, v = rnd(rng, 37, 21), np.zeros((37, 21), F32), np.zeros((37, 21), F32)
    tp, tm, tv = gpu.tensor(p), gpu.tensor(m), gpu.tensor(v)
    for step in range(1, 4):
        g = rnd(rng, 37, 21, scale=10.0 ** (step - 2))
        kw = dict(step=step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        ref.adamw_(p, g, m, v, **kw)
        gpu.adamw_(tp, gpu.tensor(g), tm, tv, **kw)
    close(gpu.numpy(tm), m, 0, 1e-6, "adamw m")
    close(gpu.numpy(tv), v, 0, 1e-6, "adamw v")
    close(gpu.numpy(tp), p, 1e-7, 1e-6, "adamw p")


# ---------------------------------------------------------------- whole sequences
def _attention_block(be, ids, P, B, T, Hq, Hkv, hd, targets):
    """A tiny float attention block and its backward, written once against any Backend:
    embed -> rmsnorm -> q/k/v (matmul) -> rope -> attention -> o (matmul) -> residual ->
    rmsnorm -> relu2 MLP -> lm_head -> cross_entropy; then every backward op and an AdamW step."""
    t = {k: be.tensor(v) for k, v in P.items()}
    x = be.embedding(be.tensor(ids), t["emb"])
    n, r1 = be.rmsnorm(x, t["ln1"], 1e-5)
    q = be.rope(be.matmul(n, t["wq"], trans_b=True), T, Hq, hd, 10000.0)
    k = be.rope(be.matmul(n, t["wk"], trans_b=True), T, Hkv, hd, 10000.0)
    v = be.matmul(n, t["wv"], trans_b=True)
    o, lse = be.attention(q, k, v, B, T, Hq, Hkv, hd)
    x1 = be.add(x, be.matmul(o, t["wo"], trans_b=True))
    n2, r2 = be.rmsnorm(x1, t["ln2"], 1e-5)
    g, u = be.matmul(n2, t["wg"], trans_b=True), be.matmul(n2, t["wu"], trans_b=True)
    x2 = be.add(x1, be.matmul(be.relu2_gate(g, u), t["wd"], trans_b=True, alpha=0.5))
    logits = be.matmul(x2, t["emb"], trans_b=True)
    loss, dlog = be.cross_entropy(logits, be.tensor(targets), 1.0 / len(targets))
    dx2 = be.matmul(dlog, t["emb"])
    grads = {"wd": be.matmul(dx2, be.relu2_gate(g, u), trans_a=True, alpha=0.5)}
    dh = be.matmul(dx2, t["wd"], alpha=0.5)
    dg, du = be.relu2_gate_backward(dh, g, u)
    dn2 = be.matmul(du, t["wu"], acc=be.matmul(dg, t["wg"]))
    dx1 = be.add(dx2, be.rmsnorm_backward(dn2, x1, t["ln2"], r2))
    grads["wo"] = be.matmul(dx1, o, trans_a=True)
    do = be.matmul(dx1, t["wo"])
    dq, dk, dv = be.attention_backward(do, q, k, v, o, lse, B, T, Hq, Hkv, hd)
    dq = be.rope(dq, T, Hq, hd, 10000.0, inverse=True)
    dk = be.rope(dk, T, Hkv, hd, 10000.0, inverse=True)
    grads["wq"] = be.matmul(dq, n, trans_a=True)
    grads["wk"] = be.matmul(dk, n, trans_a=True)
    grads["wv"] = be.matmul(dv, n, trans_a=True)
    dn = be.matmul(dv, t["wv"], acc=be.matmul(dk, t["wk"], acc=be.matmul(dq, t["wq"])))
    grads["dx"] = be.add(dx1, be.rmsnorm_backward(dn, x, t["ln1"], r1))
    wq, m, vv = t["wq"], be.zeros_like(t["wq"]), be.zeros_like(t["wq"])
    be.adamw_(wq, grads["wq"], m, vv, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.01)
    out = {k: be.numpy(v) for k, v in grads.items()}
    out["loss"], out["wq_new"] = be.numpy(loss), be.numpy(wq)
    return out


def test_attention_block_forward_backward_matches_cpu(gpu, close):
    rng = np.random.default_rng(14)
    B, T, Hq, Hkv, hd, D, I, V = 2, 5, 4, 2, 8, 32, 24, 41
    P = {"emb": rnd(rng, V, D), "ln1": 1 + rnd(rng, D, scale=0.1), "ln2": 1 + rnd(rng, D, scale=0.1),
         "wq": rnd(rng, Hq * hd, D, scale=0.2), "wk": rnd(rng, Hkv * hd, D, scale=0.2),
         "wv": rnd(rng, Hkv * hd, D, scale=0.2), "wo": rnd(rng, D, Hq * hd, scale=0.2),
         "wg": rnd(rng, I, D, scale=0.2), "wu": rnd(rng, I, D, scale=0.2), "wd": rnd(rng, D, I, scale=0.2)}
    ids = rng.integers(0, V, B * T).astype(np.int32)
    tg = rng.integers(0, V, B * T).astype(np.int32)
    tg[3] = -1
    want = _attention_block(CpuBackend(), ids, P, B, T, Hq, Hkv, hd, tg)
    got = _attention_block(gpu, ids, P, B, T, Hq, Hkv, hd, tg)
    for key in want:
        close(got[key], want[key], 1e-5 * max(1.0, np.abs(want[key]).max()), 1e-4, f"block {key}")


def test_bitnet_model_loss_and_lora_grads_match_cpu(gpu, close):
    """kernels/model.py (all ops, W1.58A8 included) on the GPU vs the NumPy backend."""
    model_mod = pytest.importorskip("bitswarm.kernels.model")
    from bitswarm.kernels.config import (PROJECTIONS, BitNetConfig, BitNetWeights, LayerWeights,
                                         LoRAConfig)
    from bitswarm.kernels.lora import init_lora
    cfg = BitNetConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       rope_theta=10000.0)
    rng = np.random.default_rng(15)
    f = lambda *s: rnd(rng, *s)  # noqa: E731
    proj = {p: ternary(rng, *cfg.proj_shape(p), ws=float(rng.uniform(0.5, 2))) for p in PROJECTIONS}
    layer = LayerWeights(1 + 0.1 * f(32), 1 + 0.1 * f(32), 1 + 0.1 * f(32), 1 + 0.1 * f(48), proj)
    # GpuBackend stores the tied table as float16 (CpuBackend: float32); a table already on the
    # float16 grid is held exactly by both, so the comparison below is of the math alone.
    embed = (0.5 * f(37, 32)).astype(np.float16).astype(F32)
    weights = BitNetWeights(cfg, embed, [layer], 1 + 0.1 * f(32))
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=PROJECTIONS)
    state = {k: (rng.standard_normal(v.shape) * 0.1).astype(F32)
             for k, v in init_lora(cfg, lcfg, 0).items()}
    ids = rng.integers(0, 37, (2, 6)).astype(np.int32)
    tg = rng.integers(0, 37, (2, 6)).astype(np.int32)
    tg[1, 4:] = -1
    results = []
    for be in (CpuBackend(), gpu):
        m = model_mod.BitNetModel(weights, be, lcfg)
        m.set_lora(state)
        loss, count, grads = m.loss_and_grads(ids, tg)
        results.append((loss, {k: be.numpy(g) for k, g in grads.items()}))
    (lc, gc_), (lg, gg) = results
    # A last-ulp difference before an absmax quantizer can move one int8 code by 1 (both are
    # faithful roundings), so the comparison allows a few quantization steps of slack.
    assert abs(lg - lc) <= 1e-4 * abs(lc), (lg, lc)
    assert set(gg) == set(gc_)
    for k in gc_:
        close(gg[k], gc_[k], 2e-3 * max(1e-3, np.abs(gc_[k]).max()), 2e-3, f"model grad {k}")
