"""RoPE (kernels/ops/rope/): the NumPy reference pinned to itself (`rope_at` at offset p equals
rows p.. of `rope`), the table cache, and each WGSL kernel against the reference.

rope_at does the same two f32 products and one add on the same table values as the reference,
exact on lavapipe, but NVIDIA's compiler fuses them into an FMA (1-2 ulp: seen 4.8e-7 absolute
on |x| <= 10 on an H200), so atol 1e-6 + rtol 1e-6; the same for rope.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.backend import Backend, CpuBackend
from bitswarm.kernels.ops.rope import reference as ref

from .helpers import rnd


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


def test_cpu_backend_has_the_decode_ops():
    be = CpuBackend()
    for name in ("rope_at", "kv_append_", "attention_decode"):    # Backend's additions
        assert name in Backend.__dict__ and callable(getattr(be, name))
    rng = np.random.default_rng(2)
    x = rnd(rng, 1, 2 * 8)
    cos, sin = ref.rope_tables(300, 8, 500000.0)
    # past the 128-row default table: the backend grows its cache
    np.testing.assert_array_equal(be.rope_at(x, 200, 2, 8, 500000.0),
                                  ref.rope_at(x, cos, sin, 200, 2, 8))


@pytest.mark.parametrize("M,pos,H,hd", [(1, 0, 3, 16), (1, 130, 2, 16), (5, 7, 4, 8)])
def test_gpu_rope_at(gpu, close, M, pos, H, hd):
    rng = np.random.default_rng(3)
    theta = 10000.0
    x = rnd(rng, M, H * hd, scale=3.0)
    cos, sin = ref.rope_tables(pos + M, hd, theta)
    got = gpu.numpy(gpu.rope_at(gpu.tensor(x), pos, H, hd, theta))
    close(got, ref.rope_at(x, cos, sin, pos, H, hd), atol=1e-6, rtol=1e-6,
          name=f"rope_at M={M} pos={pos}")
