"""CpuBackend's CPU paths (kernels/ops/<family>/cpu.py) against the family references, which stay
the source of truth. Exact (bit for bit) where the CPU path does the reference's arithmetic in
the same order: quantize_act, bitlinear and bitlinear_group (float32 GEMMs of small integers are
exact), rmsnorm, rope, the elementwise ops, matmul. A float32 tolerance where only the summation
order or the grouping of a per-row factor differs: rmsnorm_backward, attention (GQA heads
summed inside the matmul), bitlinear_backward and lm_head_cross_entropy (BLAS blocking). The
int8 input gradient (dy split into int8 terms) within the bound its docstring states.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.ops.attention import reference as att_ref
from bitswarm.kernels.ops.bitlinear import cpu as bl_cpu
from bitswarm.kernels.ops.bitlinear import reference as bl_ref
from bitswarm.kernels.ops.elementwise import reference as ew_ref
from bitswarm.kernels.ops.lm_head import reference as lm_ref
from bitswarm.kernels.ops.matmul import reference as mm_ref
from bitswarm.kernels.ops.rmsnorm import reference as rn_ref
from bitswarm.kernels.ops.rope import reference as rope_ref

from .ops.helpers import rnd, ternary

F32 = np.float32


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert np.array_equal(a, b)


@pytest.fixture
def be(monkeypatch):
    """CpuBackend with the fused loops on at every size (they otherwise start at
    jit.MIN_ELEMENTS elements), so the small test arrays compare loops with NumPy's passes."""
    from bitswarm.kernels.ops import jit
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    return CpuBackend()


def test_quantize_act_and_bitlinear_are_exact(be):
    rng = np.random.default_rng(0)
    x = rnd(rng, 67, 96, scale=3.0)
    x[3] = 0.0                                   # absmax clamped to the epsilon
    x[5, 7] = 1e4                                # one outlier row
    xq, xs = be.quantize_act(x)
    rq, rs = bl_ref.quantize_act(x)
    assert xq.dtype == (np.int8 if bl_cpu.int8_enabled() else F32)
    same(xq.astype(np.int8), rq)
    same(xs, rs)
    w = ternary(rng, 40, 96, ws=23.5)
    same(be.bitlinear(xq, xs, be.ternary(w)), bl_ref.bitlinear(rq, rs, w.codes, w.weight_scale))
    # an int8 xq (the reference's form) gives the same
    same(be.bitlinear(rq, rs, be.ternary(w)), bl_ref.bitlinear(rq, rs, w.codes, w.weight_scale))


@pytest.mark.parametrize("int8", ["1", "0"])
def test_int8_and_float_gemm_paths_are_identical(be, monkeypatch, int8):
    """The onnxruntime int8 GEMM (when installed) and the float32 GEMM give the reference's
    bitlinear bit for bit, for a group and for single projections."""
    monkeypatch.setenv("BITSWARM_CPU_INT8", int8)
    if int8 == "1" and not bl_cpu.int8_enabled():
        pytest.skip("onnxruntime not installed (the optional cpu-int8 extra)")
    rng = np.random.default_rng(7)
    x = rnd(rng, 130, 72, scale=2.0)
    ws = [ternary(rng, o, 72, ws=s) for o, s in ((72, 9.0), (24, 12.5), (24, 31.0))]
    xq, xs = be.quantize_act(x)
    assert xq.dtype == (np.int8 if int8 == "1" else F32)
    rq, rs = bl_ref.quantize_act(x)
    want = bl_ref.bitlinear_group(rq, rs, [w.codes for w in ws], [w.weight_scale for w in ws])
    for got, w in zip(be.bitlinear_group(xq, xs, be.ternary_group(ws)), want):
        same(got, w)
    for w, ref in zip(ws, want):
        same(be.bitlinear(xq, xs, be.ternary(w)), ref)
    if int8 == "1":
        from bitswarm.kernels.ops.bitlinear import int8_gemm
        c = ws[0].codes
        same(int8_gemm.gemm(int8_gemm.offset_u8(rq), np.ascontiguousarray(c.T)),
             bl_ref.bitlinear_int(rq, c))


def test_bitlinear_group_is_one_stacked_gemm_and_exact(be):
    rng = np.random.default_rng(1)
    x = rnd(rng, 50, 64)
    ws = [ternary(rng, o, 64, ws=s) for o, s in ((64, 11.0), (16, 13.0), (16, 17.5))]
    group = be.ternary_group(ws)
    assert group[0].group is group[2].group
    xq, xs = be.quantize_act(x)
    rq, rs = bl_ref.quantize_act(x)
    got = be.bitlinear_group(xq, xs, group)
    want = bl_ref.bitlinear_group(rq, rs, [w.codes for w in ws], [w.weight_scale for w in ws])
    for g, w in zip(got, want):
        assert g.flags.c_contiguous
        same(g, w)
    for g, w in zip(group, ws):                  # members alone equal the group's parts
        same(be.bitlinear(xq, xs, g), bl_ref.bitlinear(rq, rs, w.codes, w.weight_scale))
    with pytest.raises(ValueError, match="in_features"):
        be.ternary_group([ternary(rng, 4, 8), ternary(rng, 4, 9)])


def test_bitlinear_backward_within_float32(be, close):
    rng = np.random.default_rng(2)
    w = ternary(rng, 48, 80, ws=21.0)
    dy, acc = rnd(rng, 33, 48), rnd(rng, 33, 80)
    h = be.ternary(w)
    close(be.bitlinear_backward(dy, h), bl_ref.bitlinear_backward(dy, w.codes, w.weight_scale),
          1e-6, 1e-5, "bitlinear_backward")
    close(be.bitlinear_backward(dy, h, acc),
          bl_ref.bitlinear_backward(dy, w.codes, w.weight_scale) + acc, 1e-6, 1e-5,
          "bitlinear_backward acc")
    # a plain TernaryLinear (a test's ternarize hook) works too
    close(be.bitlinear_backward(dy, w), bl_ref.bitlinear_backward(dy, w.codes, w.weight_scale),
          1e-6, 1e-5, "bitlinear_backward plain")


def test_int8_input_gradient_within_its_stated_bound(be, close, monkeypatch):
    """bitlinear_backward through the int8 GEMM (dy split into three int8 terms per row): every
    dx element within K * ((0.5 / 254^2 + 2^-17) / 127) * max|dy_row| / weight_scale of the
    exact (float64) product, as bl_cpu._backward_int8 states, within the float32 test's
    tolerance of the reference, and within 2x of an in-order float32 GEMM's distance from it.
    Zero rows give zero; acc is added; numba's loops and the NumPy passes give the same bits;
    the float32 GEMM runs with BITSWARM_CPU_STE=f32."""
    if not bl_cpu.int8_enabled():
        pytest.skip("onnxruntime not installed (the optional cpu-int8 extra)")
    monkeypatch.setenv("BITSWARM_CPU_STE", "i24")
    be = CpuBackend()                                        # reads BITSWARM_CPU_STE
    assert be.ste == "i24"
    monkeypatch.setattr(bl_cpu, "GRAD_BLOCK", 16)            # several blocks per thread
    rng = np.random.default_rng(9)
    for out, k, n in ((48, 80, 67), (300, 40, 150), (7, 5, 3)):
        w = ternary(rng, out, k, ws=21.0)
        dy, acc = rnd(rng, n, out, scale=1e-3), rnd(rng, n, k)
        dy[1] = 0.0
        dy[2, 3] = 1.0                                       # one outlier row
        exact = dy.astype(np.float64) @ w.codes.astype(np.float64) / 21.0
        bound = out * ((0.5 / 254.0 ** 2 + 2.0 ** -17) / 127) \
            * np.abs(dy).max(axis=1, keepdims=True) / 21.0
        got = be.bitlinear_backward(dy, be.ternary(w))
        assert got.dtype == F32 and got.shape == (n, k)
        assert np.all(np.abs(got - exact) <= bound)
        assert not got[1].any()
        ref = bl_ref.bitlinear_backward(dy, w.codes, w.weight_scale)
        close(got, ref, 1e-6, 1e-5, "bitlinear_backward int8")
        # The yardstick is a float32 GEMM that sums in order, not `ref`: BLAS picks its kernel
        # (blocking, FMA) by CPU, so ref's own error moves between machines (an AMD EPYC's
        # OpenBLAS lands 1.5x closer than in-order float32 on the outlier row here).
        codes = w.codes.astype(F32)
        in_order = np.zeros((n, k), F32)
        for j in range(out):
            in_order = in_order + dy[:, j:j + 1] * codes[j]
        in_order = in_order / F32(21.0)
        assert np.abs(got - exact).max() <= 2 * np.abs(in_order - exact).max() + 1e-12
        with_acc = be.bitlinear_backward(dy, be.ternary(w), acc)
        close(with_acc, got + acc, 1e-7, 1e-6, "acc")
        monkeypatch.setenv("BITSWARM_CPU_NUMBA", "0")        # the NumPy passes: same bits
        same(be.bitlinear_backward(dy, be.ternary(w)), got)
        same(be.bitlinear_backward(dy, be.ternary(w), acc), with_acc)
        monkeypatch.delenv("BITSWARM_CPU_NUMBA")
    monkeypatch.setenv("BITSWARM_CPU_STE", "f32")
    assert bl_cpu.ste_mode() == "f32"
    be = CpuBackend()
    same(be.bitlinear_backward(dy, be.ternary(w)),
         np.matmul(dy, be.ternary(w).grad_matrix()))


def test_i16_input_gradient_is_the_gpus_int_ste_bit_for_bit(be, monkeypatch):
    """BITSWARM_CPU_STE=i16: dx equals reference.bitlinear_backward_int(terms=2) (the GPU's i16,
    bitlinear_backward_int.wgsl) bit for bit, with numba's loops and with the NumPy passes, acc
    added after; zero rows give zero. "auto" takes it for wide dy only; a bad value is refused."""
    if not bl_cpu.int8_enabled():
        pytest.skip("onnxruntime not installed (the optional cpu-int8 extra)")
    be = CpuBackend("i16")
    monkeypatch.setattr(bl_cpu, "GRAD_BLOCK", 16)            # several blocks per thread
    rng = np.random.default_rng(11)
    for out, k, n in ((48, 80, 67), (300, 40, 150), (7, 5, 3)):
        w = ternary(rng, out, k, ws=21.0)
        dy, acc = rnd(rng, n, out, scale=1e-3), rnd(rng, n, k)
        dy[1] = 0.0
        dy[2, 3] = 1.0                                       # one outlier row
        want = bl_ref.bitlinear_backward_int(dy, w.codes, w.weight_scale, terms=2)
        got = be.bitlinear_backward(dy, be.ternary(w))
        same(got, want)
        assert not got[1].any()
        same(be.bitlinear_backward(dy, be.ternary(w), acc), want + acc)
        monkeypatch.setenv("BITSWARM_CPU_NUMBA", "0")        # the NumPy passes: same bits
        same(be.bitlinear_backward(dy, be.ternary(w)), want)
        monkeypatch.delenv("BITSWARM_CPU_NUMBA")
    monkeypatch.setenv("BITSWARM_CPU_STE", "auto")
    big = 1 << 20
    assert bl_cpu.ste_mode(big, bl_cpu.STE_I16_MIN_K) == ("i16" if bl_cpu.jit.enabled() else "f32")
    assert bl_cpu.ste_mode(big, bl_cpu.STE_I16_MIN_K - 1) == "f32"
    monkeypatch.setattr(bl_cpu.jit, "MIN_ELEMENTS", 1 << 16)  # the fixture lowers it to 0
    assert bl_cpu.ste_mode((1 << 16) - 1, 4096) == "f32"     # below it: NumPy's passes, f32
    assert "STE input gradient i16" in be.device_info
    with pytest.raises(ValueError, match="--cpu-ste must be one of auto, f32, i24, i16, got 'bf16'"):
        CpuBackend("bf16")
    monkeypatch.setenv("BITSWARM_CPU_STE", "bf16")
    with pytest.raises(ValueError, match="BITSWARM_CPU_STE / --cpu-ste"):
        CpuBackend()


def test_norm_elementwise_rope_matmul(be, close):
    rng = np.random.default_rng(3)
    x, w, dy = rnd(rng, 20, 48), 1 + 0.1 * rnd(rng, 48), rnd(rng, 20, 48)
    y, r = be.rmsnorm(x, w, 1e-5)
    ry, rr = rn_ref.rmsnorm(x, w, 1e-5)
    same(y, ry)
    same(r, rr)
    close(be.rmsnorm_backward(dy, x, w, r), rn_ref.rmsnorm_backward(dy, x, w, rr), 1e-6, 1e-5,
          "rmsnorm_backward")
    g, u, dh = rnd(rng, 20, 48), rnd(rng, 20, 48), rnd(rng, 20, 48)
    same(be.relu2_gate(g, u), ew_ref.relu2_gate(g, u))
    for a, b in zip(be.relu2_gate_backward(dh, g, u), ew_ref.relu2_gate_backward(dh, g, u)):
        same(a, b)
    same(be.add(g, u), ew_ref.add(g, u))
    B, T, H, hd = 3, 7, 4, 16
    q = rnd(rng, B * T, H * hd)
    cos, sin = rope_ref.rope_tables(T, hd, 10000.0)
    for inv in (False, True):
        same(be.rope(q, T, H, hd, 10000.0, inverse=inv), rope_ref.rope(q, cos, sin, T, H, hd, inv))
    cos, sin = rope_ref.rope_tables(9, hd, 10000.0)
    same(be.rope_at(q[:2], 5, H, hd, 10000.0), rope_ref.rope_at(q[:2], cos, sin, 5, H, hd))
    a, b, c = rnd(rng, 9, 5), rnd(rng, 7, 5), rnd(rng, 9, 7)
    for ta, tb in ((False, True), (True, False)):
        aa, bb = (a.T.copy() if ta else a), (b if tb else b.T.copy())
        same(be.matmul(aa, bb, trans_a=ta, trans_b=tb, alpha=0.5, acc=c),
             mm_ref.matmul(aa, bb, trans_a=ta, trans_b=tb, alpha=0.5, acc=c))
        close(be.matmul(aa, bb, trans_a=ta, trans_b=tb, alpha=0.3),     # not a power of two
              mm_ref.matmul(aa, bb, trans_a=ta, trans_b=tb, alpha=0.3), 1e-6, 1e-5, "matmul")


@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (6, 2), (4, 1)])
def test_attention_forward_backward_within_float32(be, close, Hq, Hkv):
    rng = np.random.default_rng(4)
    B, T, hd = 2, 9, 8
    q, k, v = rnd(rng, B * T, Hq * hd), rnd(rng, B * T, Hkv * hd), rnd(rng, B * T, Hkv * hd)
    o, lse = be.attention(q, k, v, B, T, Hq, Hkv, hd)
    ro, rl = att_ref.attention(q, k, v, B, T, Hq, Hkv, hd)
    close(o, ro, 1e-6, 1e-5, "attention o")
    close(lse, rl, 1e-6, 1e-5, "attention lse")
    do = rnd(rng, B * T, Hq * hd)
    got = be.attention_backward(do, q, k, v, o, lse, B, T, Hq, Hkv, hd)
    want = att_ref.attention_backward(do, q, k, v, ro, rl, B, T, Hq, Hkv, hd)
    for g, w, n in zip(got, want, ("dq", "dk", "dv")):
        close(g, w, 1e-5, 1e-4, f"attention {n}")


@pytest.mark.parametrize("chunk", [5, 16, 100])
def test_lm_head_cross_entropy_within_float32(be, close, chunk):
    rng = np.random.default_rng(5)
    N, D, V = 13, 24, 37
    x, w = rnd(rng, N, D), rnd(rng, V, D)
    t = rng.integers(0, V, N).astype(np.int32)
    t[[2, 9]] = -1
    loss, dx = be.lm_head_cross_entropy(x, w, t, 0.25, chunk=chunk)
    rloss, rdx = lm_ref.lm_head_cross_entropy(x, w, t, 0.25, chunk=chunk)
    close(loss, rloss, 1e-5, 1e-5, "loss")
    close(dx, rdx, 1e-6, 1e-5, "dx")
    loss2, none = be.lm_head_cross_entropy(x, w, t, 0.25, chunk=chunk, grad=False)
    assert none is None
    same(loss2, loss)
    with pytest.raises(IndexError):
        be.lm_head_cross_entropy(x, w, np.full(N, V, np.int32), 1.0)


def test_float64_when_the_references_are(monkeypatch, be):
    """The CPU paths follow precision.F32 as the references do (the float64 gradient checks)."""
    from bitswarm.kernels.ops import precision
    monkeypatch.setattr(precision, "F32", np.float64)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 16))
    w = ternary(rng, 8, 16)
    h = bl_cpu.ternary(w)
    assert h.dense().dtype == np.float64
    assert be.bitlinear_backward(rng.standard_normal((5, 8)), h).dtype == np.float64
    assert be.rmsnorm(x, np.ones(16), 1e-5)[0].dtype == np.float64


def test_float_copies_beyond_the_cache_budget_are_rebuilt_per_call(be, monkeypatch):
    """Past CACHE_BYTES the float copies of the codes are not kept; results are the same."""
    rng = np.random.default_rng(8)
    w = ternary(rng, 32, 48, ws=7.0)
    dy = rnd(rng, 10, 32)
    kept = be.bitlinear_backward(dy, be.ternary(w))
    monkeypatch.setattr(bl_cpu, "CACHE_BYTES", 0)
    h = be.ternary(w)
    same(be.bitlinear_backward(dy, h), kept)
    assert not any(isinstance(k, tuple) for k in h._cache)      # nothing float was kept


@pytest.mark.parametrize("C", [1, 7, 48, 129, 384, 1000, 2560, 8192])
def test_numba_loops_and_numpy_passes_give_the_same_bits(be, monkeypatch, C):
    """Each fused loop (kernels/ops/jit.py: rmsnorm and its backward, quantize_act, the
    bitlinear forward's scaling, relu2_gate and its backward, rope) against the NumPy passes it replaces, bit for bit, at row lengths
    around NumPy's pairwise-sum blocks (8, 128) and the model's widths; rows with zeros and
    outliers."""
    from bitswarm.kernels.ops import jit
    if not jit.enabled():
        pytest.skip("numba not installed (the optional cpu-int8 extra)")
    rng = np.random.default_rng(C)
    N = 70
    x = rnd(rng, N, C) * rng.uniform(0.01, 30, (N, 1)).astype(F32)
    x[3] = 0.0
    x[5, 0] = 1e4
    w, dy, u = 1 + 0.1 * rnd(rng, C), rnd(rng, N, C), rnd(rng, N, C)
    g_rng = np.random.default_rng(C + 1)
    group = be.ternary_group([ternary(g_rng, 24, C, ws=9.0), ternary(g_rng, 8, C, ws=3.5)])

    def run():
        y, r = be.rmsnorm(x, w, 1e-5)
        out = [y, r, be.rmsnorm_backward(dy, x, w, r), *be.quantize_act(x),
               be.relu2_gate(x, u), *be.relu2_gate_backward(dy, x, u),
               *be.bitlinear_group(*be.quantize_act(x), group)]
        if C % 2 == 0:
            T, H = 7, 2 if C % 4 == 0 else 1
            q = rnd(rng, 2 * T, C)
            out += [be.rope(q, T, H, C // H, 10000.0, inverse=inv) for inv in (False, True)]
        return out
    fused = run()
    monkeypatch.setenv("BITSWARM_CPU_NUMBA", "0")
    rng = np.random.default_rng(C)          # the same rope inputs
    x = rnd(rng, N, C) * rng.uniform(0.01, 30, (N, 1)).astype(F32)
    x[3] = 0.0
    x[5, 0] = 1e4
    w, dy, u = 1 + 0.1 * rnd(rng, C), rnd(rng, N, C), rnd(rng, N, C)
    for a, b in zip(fused, run(), strict=True):
        same(a, b)


@pytest.mark.parametrize("T,Hq,Hkv", [(9, 4, 4), (128, 6, 2), (33, 4, 1)])
def test_attention_numba_loops_give_the_numpy_passes_bits(be, monkeypatch, T, Hq, Hkv):
    """attention and attention_backward (with the kept probabilities and recomputing them):
    the fused softmax / backward loops against the NumPy passes, bit for bit."""
    from bitswarm.kernels.ops import jit
    if not jit.enabled():
        pytest.skip("numba not installed (the optional cpu-int8 extra)")
    rng = np.random.default_rng(T)
    B, hd = 2, 16
    q, k, v = (rnd(rng, B * T, H * hd, scale=3.0) for H in (Hq, Hkv, Hkv))
    do = rnd(rng, B * T, Hq * hd)

    def run():
        o, lse = be.attention(q, k, v, B, T, Hq, Hkv, hd)
        out = [o, np.asarray(lse), *be.attention_backward(do, q, k, v, o, lse, B, T, Hq, Hkv, hd)]
        plain = np.asarray(lse).copy()                  # no kept probabilities: recomputed
        return out + list(be.attention_backward(do, q, k, v, o, plain, B, T, Hq, Hkv, hd))
    fused = run()
    monkeypatch.setenv("BITSWARM_CPU_NUMBA", "0")
    for a, b in zip(fused, run(), strict=True):
        same(a, b)


def test_small_arrays_never_import_numba_large_ones_run_the_loops():
    """Below jit.MIN_ELEMENTS the NumPy passes run and numba is not even imported (~0.65 s per
    process, which the suite's node processes would pay); at the default model's training size
    the fused loops run. A fresh interpreter each, so earlier imports do not count."""
    from bitswarm.kernels.ops import jit
    if not jit.enabled():
        pytest.skip("numba not installed (the optional cpu-int8 extra)")
    code = """
import sys, numpy as np
from bitswarm.kernels.backend import CpuBackend
be = CpuBackend()
n = int(sys.argv[1])
x = np.linspace(-1, 1, n * 384, dtype=np.float32).reshape(n, 384)
be.rmsnorm(x, np.ones(384, np.float32), 1e-5)
be.relu2_gate(x, x)
print('numba' in sys.modules)
"""
    import subprocess
    import sys
    out = [subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip() for n in (64, 1024)]
    assert out == ["False", "True"]
