"""Causal GQA attention (kernels/ops/attention/): training forward/backward and the decode ops
(kv_append_, attention_decode) on the GPU against the NumPy reference, and the decode reference
pinned to the training one (`attention_decode` over L cached rows equals row L-1 of the causal
`attention`).

attention.wgsl tiles 32 query rows x 32 keys and splits head dims over 16 invocations of vec4s.
Tolerances: exp of scores |S| ~ scale^2 sqrt(hd) carries ~|S| ulp of error; kv_append_ is an
exact copy; attention_decode sums in a different order than NumPy and uses WGSL exp (a few
ulp), so atol 1e-5 + rtol 1e-4 on O(1) outputs. Shapes are awkward on purpose (L not a
multiple of the 64-wide workgroup, L = 1, GQA groups).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.ops.attention import reference as ref

from .helpers import rnd

F32 = np.float32


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


def test_attention_decode_is_the_last_causal_row():
    rng = np.random.default_rng(1)
    Hq, Hkv, hd = 6, 2, 8
    for L in (1, 2, 9):
        q, k, v = rnd(rng, L, Hq * hd), rnd(rng, L, Hkv * hd), rnd(rng, L, Hkv * hd)
        o, _ = ref.attention(q, k, v, 1, L, Hq, Hkv, hd)
        kc = np.zeros((L + 3, Hkv * hd), F32)
        vc = np.zeros_like(kc)
        kc[:L], vc[:L] = k, v
        got = ref.attention_decode(q[L - 1:], kc, vc, L, Hq, Hkv, hd)
        np.testing.assert_allclose(got, o[L - 1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="L=0"):
        ref.attention_decode(q[:1], kc, vc, 0, Hq, Hkv, hd)


def test_kv_append_in_place_and_bounds():
    cache = np.zeros((5, 4), F32)
    x = np.arange(8, dtype=F32).reshape(2, 4)
    ref.kv_append_(cache, x, 3)
    np.testing.assert_array_equal(cache[3:], x)
    assert not cache[:3].any()
    with pytest.raises(ValueError, match="does not fit"):
        ref.kv_append_(cache, x, 4)
    with pytest.raises(ValueError, match="does not fit"):
        ref.kv_append_(cache, x[:, :3], 0)


def test_gpu_kv_append(gpu):
    rng = np.random.default_rng(4)
    cache = rnd(rng, 9, 12)
    c = gpu.tensor(cache)
    rows = rnd(rng, 3, 12)
    gpu.kv_append_(c, gpu.tensor(rows), 6)
    ref.kv_append_(cache, rows, 6)
    one = rnd(rng, 1, 12)
    gpu.kv_append_(c, gpu.tensor(one), 0)
    ref.kv_append_(cache, one, 0)
    np.testing.assert_array_equal(gpu.numpy(c), cache)
    with pytest.raises(ValueError, match="does not fit"):
        gpu.kv_append_(c, gpu.tensor(rows), 7)


@pytest.mark.parametrize("L,Hq,Hkv,hd", [(1, 4, 2, 16), (70, 4, 2, 16), (33, 6, 3, 24), (5, 2, 2, 8)])
def test_gpu_attention_decode(gpu, close, L, Hq, Hkv, hd):
    rng = np.random.default_rng(5)
    Lmax = L + 4
    q = rnd(rng, 1, Hq * hd)
    kc, vc = rnd(rng, Lmax, Hkv * hd), rnd(rng, Lmax, Hkv * hd)   # rows >= L must be ignored
    got = gpu.numpy(gpu.attention_decode(gpu.tensor(q), gpu.tensor(kc), gpu.tensor(vc),
                                         L, Hq, Hkv, hd))
    close(got, ref.attention_decode(q, kc, vc, L, Hq, Hkv, hd), atol=1e-5, rtol=1e-4,
          name=f"attention_decode L={L}")


def test_gpu_attention_decode_bad_shapes(gpu):
    q = gpu.tensor(np.zeros((1, 32), F32))
    kc = gpu.tensor(np.zeros((4, 16), F32))
    with pytest.raises(ValueError, match="L=5"):
        gpu.attention_decode(q, kc, kc, 5, 2, 1, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        gpu.attention_decode(q, kc, kc, 1, 2, 3, 16)
