"""The decode (KV-cache) ops: NumPy reference semantics, and each WGSL op (GpuDecodeOps, lavapipe
on CI) against it.

The reference is pinned to the training ops it must reproduce row by row: `rope_at` at offset p
equals rows p.. of `rope`, `attention_decode` over L cached rows equals row L-1 of the causal
`attention`. GPU tolerances: kv_append_ is an exact copy; rope_at does the same two f32
products and one add on the same table values, exact on lavapipe, but NVIDIA's compiler fuses
them into an FMA (1-2 ulp: seen 4.8e-7 absolute on |x| <= 10 on an H200), so atol 1e-6 + rtol
1e-6; attention_decode sums in a different order than NumPy and uses WGSL exp (a few ulp), so
atol 1e-5 + rtol 1e-4 on O(1) outputs.
Shapes are awkward on purpose (L not a multiple of the 64-wide workgroup, L = 1, GQA groups).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels import reference as ref
from bitswarm.kernels.backend import CpuBackend, DecodeBackend

F32 = np.float32


def rnd(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


@pytest.fixture(scope="module")
def dec(gpu):
    from bitswarm.kernels.gpu_decode_ops import GpuDecodeOps
    return GpuDecodeOps(gpu)


# ---------------------------------------------------------------- reference semantics
def test_rope_at_is_rope_with_an_offset():
    rng = np.random.default_rng(0)
    T, H, hd = 11, 3, 8
    cos, sin = ref.rope_tables(T, hd, 10000.0)
    x = rnd(rng, T, H * hd)
    full = ref.rope(x, cos, sin, T, H, hd)
    for p in (0, 4, 10):
        np.testing.assert_array_equal(ref.rope_at(x[p:], cos, sin, p, H, hd), full[p:])
    np.testing.assert_array_equal(ref.rope_at(x[5:6], cos, sin, 5, H, hd), full[5:6])
    with pytest.raises(ValueError, match="outside tables"):
        ref.rope_at(x[:2], cos, sin, T - 1, H, hd)


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


def test_cpu_backend_has_the_decode_ops():
    be = CpuBackend()
    for name in ("rope_at", "kv_append_", "attention_decode"):    # DecodeBackend's additions
        assert name in DecodeBackend.__dict__ and callable(getattr(be, name))
    rng = np.random.default_rng(2)
    x = rnd(rng, 1, 2 * 8)
    cos, sin = ref.rope_tables(300, 8, 500000.0)
    # past the 128-row default table: the backend grows its cache
    np.testing.assert_array_equal(be.rope_at(x, 200, 2, 8, 500000.0),
                                  ref.rope_at(x, cos, sin, 200, 2, 8))


# ---------------------------------------------------------------- GPU vs reference
@pytest.mark.parametrize("M,pos,H,hd", [(1, 0, 3, 16), (1, 130, 2, 16), (5, 7, 4, 8)])
def test_gpu_rope_at(gpu, dec, close, M, pos, H, hd):
    rng = np.random.default_rng(3)
    theta = 10000.0
    x = rnd(rng, M, H * hd, scale=3.0)
    cos, sin = ref.rope_tables(pos + M, hd, theta)
    got = gpu.numpy(dec.rope_at(gpu.tensor(x), pos, H, hd, theta))
    close(got, ref.rope_at(x, cos, sin, pos, H, hd), atol=1e-6, rtol=1e-6,
          name=f"rope_at M={M} pos={pos}")


def test_gpu_kv_append(gpu, dec):
    rng = np.random.default_rng(4)
    cache = rnd(rng, 9, 12)
    c = gpu.tensor(cache)
    rows = rnd(rng, 3, 12)
    dec.kv_append_(c, gpu.tensor(rows), 6)
    ref.kv_append_(cache, rows, 6)
    one = rnd(rng, 1, 12)
    dec.kv_append_(c, gpu.tensor(one), 0)
    ref.kv_append_(cache, one, 0)
    np.testing.assert_array_equal(gpu.numpy(c), cache)
    with pytest.raises(ValueError, match="does not fit"):
        dec.kv_append_(c, gpu.tensor(rows), 7)


@pytest.mark.parametrize("L,Hq,Hkv,hd", [(1, 4, 2, 16), (70, 4, 2, 16), (33, 6, 3, 24), (5, 2, 2, 8)])
def test_gpu_attention_decode(gpu, dec, close, L, Hq, Hkv, hd):
    rng = np.random.default_rng(5)
    Lmax = L + 4
    q = rnd(rng, 1, Hq * hd)
    kc, vc = rnd(rng, Lmax, Hkv * hd), rnd(rng, Lmax, Hkv * hd)   # rows >= L must be ignored
    got = gpu.numpy(dec.attention_decode(gpu.tensor(q), gpu.tensor(kc), gpu.tensor(vc),
                                         L, Hq, Hkv, hd))
    close(got, ref.attention_decode(q, kc, vc, L, Hq, Hkv, hd), atol=1e-5, rtol=1e-4,
          name=f"attention_decode L={L}")


def test_gpu_attention_decode_bad_shapes(gpu, dec):
    q = gpu.tensor(np.zeros((1, 32), F32))
    kc = gpu.tensor(np.zeros((4, 16), F32))
    with pytest.raises(ValueError, match="L=5"):
        dec.attention_decode(q, kc, kc, 5, 2, 1, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        dec.attention_decode(q, kc, kc, 1, 2, 3, 16)
