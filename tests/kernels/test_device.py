"""The device layer (kernels/device/): transfers of every dtype, shader errors named, the buffer
pool recycling a step's buffers, and named uniform parameters parsed from WGSL.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

from bitswarm.kernels.device import DeviceError, parse_params

from .ops.helpers import rnd


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


def test_read_many_is_one_round_trip_with_each_tensors_values(gpu):
    """numpy_many downloads tensors of every dtype and size (zero-size, int8 rows, odd byte
    counts, a tensor written by a kernel still pending) exactly as numpy() does, with ONE map
    of the queue (read_buffer called once); an empty list and all-empty tensors need none."""
    rng = np.random.default_rng(1)
    host = [rnd(rng, 3, 5), rng.integers(-5, 5, 7).astype(np.int32),
            rng.integers(-128, 128, (3, 7)).astype(np.int8), np.zeros((0, 4), np.float32),
            rnd(rng, 1, 1), rnd(rng, 64, 33)]
    ts = [gpu.tensor(h) for h in host]
    ts.append(gpu.zeros_like(ts[-1]))                   # a kernel's output, not yet submitted
    host.append(np.zeros_like(host[-1]))
    calls = []
    real = gpu.ctx.queue.read_buffer

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)
    gpu.ctx.queue.read_buffer = counting
    try:
        got = gpu.numpy_many(ts)
        assert len(calls) == 1
        assert gpu.numpy_many([]) == [] and len(calls) == 1
        assert gpu.numpy_many([ts[3]])[0].shape == (0, 4) and len(calls) == 1
    finally:
        del gpu.ctx.queue.read_buffer
    for g, h in zip(got, host):
        assert g.dtype == h.dtype and g.shape == h.shape
        np.testing.assert_array_equal(g, h)


def test_device_error_names_the_shader(gpu):
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


def test_params_layout_follows_wgsl_uniform_rules():
    src = """
    // a comment with struct Fake { x: f32 }
    struct Params { n: u32, eps: f32, v: vec3<f32>, k: i32, w: vec2u }
    """
    lay = parse_params("t.wgsl", src)
    assert lay.names == ("n", "eps", "v", "k", "w")
    # n@0 eps@4 v@16 (vec3 aligns to 16, size 12) k@28 w@32 (vec2 aligns to 8); size 48 (align 16)
    assert lay.size == 48
    raw = lay.pack(n=7, eps=0.5, v=(1.0, 2.0, 3.0), k=-2, w=(9, 10))
    assert len(raw) == 48
    assert np.frombuffer(raw[:4], np.uint32)[0] == 7
    assert np.frombuffer(raw[16:28], np.float32).tolist() == [1.0, 2.0, 3.0]
    assert np.frombuffer(raw[28:32], np.int32)[0] == -2
    assert np.frombuffer(raw[32:40], np.uint32).tolist() == [9, 10]


def test_params_scalars_pack_back_to_back():
    lay = parse_params("s.wgsl", "struct Params { rows: u32, c: u32, eps: f32 }")
    assert lay.pack(rows=3, c=5, eps=1e-5) == np.array([3, 5], np.uint32).tobytes() + \
        np.array([1e-5], np.float32).tobytes()


def test_params_wrong_names_and_types_raise():
    lay = parse_params("s.wgsl", "struct Params { rows: u32, eps: f32 }")
    with pytest.raises(ValueError, match=r"s.wgsl struct Params: missing \['eps'\], unknown \['epsilon'\]"):
        lay.pack(rows=1, epsilon=0.1)
    with pytest.raises(ValueError, match="missing"):
        lay.pack(rows=1)
    with pytest.raises(ValueError, match="no struct RParams"):
        parse_params("s.wgsl", "struct Params { rows: u32 }", "RParams")
    with pytest.raises(ValueError, match="not u32/i32/f32"):
        parse_params("m.wgsl", "struct Params { m: mat2x2<f32> }")
