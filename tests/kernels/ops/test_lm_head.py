"""The chunked lm_head + cross-entropy (reference.lm_head_cross_entropy and its WGSL version) and
the float16 tables, against the unchunked reference: matmul -> cross_entropy -> matmul.

The reference keeps float32 math, so chunked vs unchunked differ only in float32 summation
order (online log-sum-exp rescaling included): tolerances are a few ulp of the sums. The GPU
op reads float16 tables exactly (unpack2x16float) and is compared against the reference run on
the same float16-rounded table.
cross_entropy.wgsl against its reference: the loss to 1e-5 (times the logit scale), the
gradient to rtol 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.ops.embedding.reference import embedding
from bitswarm.kernels.ops.lm_head import reference as ref
from bitswarm.kernels.ops.matmul.reference import matmul

from .helpers import rnd

F32 = np.float32


def unchunked(x, w, t, gs):
    w = w.astype(F32)
    loss, dlog = ref.cross_entropy(matmul(x, w, trans_b=True), t, gs)
    return loss, matmul(dlog, w)


def case(rng, N, V, D, scale):
    x = (rng.standard_normal((N, D)) * scale).astype(F32)
    w = (rng.standard_normal((V, D)) * 0.5).astype(F32)
    t = rng.integers(0, V, N).astype(np.int32)
    t[::4] = -1                    # padding rows: loss 0, gradient 0
    return x, w, t


@pytest.mark.parametrize("N,V,D,chunk,scale", [(1, 1, 1, 1, 1.0), (9, 300, 16, 64, 1.0),
                                               (9, 300, 16, 300, 1.0), (7, 1000, 33, 97, 8.0),
                                               (5, 257, 8, 1000, 30.0)])


def test_reference_chunked_equals_unchunked(N, V, D, chunk, scale, close):
    rng = np.random.default_rng(0)
    x, w, t = case(rng, N, V, D, scale)
    loss, dx = ref.lm_head_cross_entropy(x, w, t, 0.25, chunk=chunk)
    rl, rdx = unchunked(x, w, t, 0.25)
    close(loss, rl, 2e-5 * max(1.0, scale), 1e-5, "chunked loss")
    close(dx, rdx, 2e-6 * max(1.0, np.abs(rdx).max()), 1e-4, "chunked dx")
    assert np.all(loss[t < 0] == 0) and np.all(dx[t < 0] == 0)
    l2, none = ref.lm_head_cross_entropy(x, w, t, 0.25, chunk=chunk, grad=False)
    assert none is None
    np.testing.assert_array_equal(l2, loss)


def test_reference_rejects_bad_input():
    x, w = np.zeros((2, 3), F32), np.zeros((5, 3), F32)
    with pytest.raises(IndexError):
        ref.lm_head_cross_entropy(x, w, np.array([0, 5], np.int32), 1.0)
    with pytest.raises(ValueError):
        ref.lm_head_cross_entropy(x, w, np.array([0, 1], np.int32), 1.0, chunk=0)


@pytest.mark.parametrize("f16", [True, False])
@pytest.mark.parametrize("N,V,D,chunk,scale", [(1, 1, 2, 1, 1.0), (9, 300, 16, 64, 1.0),
                                               (70, 1000, 33, 97, 8.0), (5, 257, 130, 1000, 30.0)])


def test_gpu_matches_reference(gpu, close, f16, N, V, D, chunk, scale):
    rng = np.random.default_rng(1)
    x, w, t = case(rng, N, V, D, scale)
    tw = gpu.table(w) if f16 else gpu.tensor(w)
    assert tw.dtype == ("float16" if f16 else "float32")
    wr = w.astype(np.float16) if f16 else w            # what the GPU holds, exactly
    tx, tt = gpu.tensor(x), gpu.tensor(t)
    loss, dx = gpu.lm_head_cross_entropy(tx, tw, tt, 0.25, chunk=chunk)
    rl, rdx = ref.lm_head_cross_entropy(x, wr, t, 0.25, chunk=chunk)
    close(gpu.numpy(loss), rl, 2e-5 * max(1.0, scale), 1e-5, "gpu loss")
    close(gpu.numpy(dx), rdx, 2e-6 * np.sqrt(V) * max(1.0, np.abs(rdx).max()), 1e-4, "gpu dx")
    l2, none = gpu.lm_head_cross_entropy(tx, tw, tt, 0.25, chunk=chunk, grad=False)
    assert none is None
    close(gpu.numpy(l2), rl, 2e-5 * max(1.0, scale), 1e-5, "gpu loss (no grad)")
    with pytest.raises(IndexError):
        gpu.lm_head_cross_entropy(tx, tw, gpu.tensor(np.full(N, V, np.int32)), 1.0)


@pytest.mark.parametrize("f16", [True, False])
def test_gpu_tile128_same_bits_as_tile64(gpu, close, f16):
    """The lm_head's two matmuls per vocab chunk on 128 x 128 tiles (matmul.wgsl main8, K steps
    of 8 and 16), with f16 table words read in pairs, and from each f16 chunk widened to f32
    (matmul.wgsl widen) give the 64 x 64 tiles' bits: loss and dx identical; all match the
    reference."""
    rng = np.random.default_rng(4)
    N, V, D, chunk = 200, 700, 136, 300            # partial tiles on every edge, 3 chunks
    x, w, t = case(rng, N, V, D, 4.0)
    tw = gpu.table(w) if f16 else gpu.tensor(w)
    tx, tt = gpu.tensor(x), gpu.tensor(t)
    out = {}
    saved = gpu.matmul_tile, gpu.matmul_ks8, gpu.matmul_f16_pairs
    # (matmul_tile, matmul_ks8, matmul_f16_pairs, lm_head_widen); None: matmul_tile's choice
    configs = [(64, 8, False, False), (128, 8, False, False), (128, 16, True, False),
               (64, 8, True, False), (128, 8, False, True), (None, 16, True, True)]
    saved = saved + (gpu.lm_head_widen,)
    try:
        for cfg in configs:
            gpu.matmul_tile, gpu.matmul_ks8, gpu.matmul_f16_pairs, gpu.lm_head_widen = cfg
            loss, dx = gpu.lm_head_cross_entropy(tx, tw, tt, 0.25, chunk=chunk)
            out[cfg] = gpu.numpy(loss), gpu.numpy(dx)
    finally:
        gpu.matmul_tile, gpu.matmul_ks8, gpu.matmul_f16_pairs, gpu.lm_head_widen = saved
    for cfg in configs[1:]:
        np.testing.assert_array_equal(out[cfg][0], out[configs[0]][0], str(cfg))
        np.testing.assert_array_equal(out[cfg][1], out[configs[0]][1], str(cfg))
    out[128] = out[configs[2]]
    wr = w.astype(np.float16) if f16 else w
    rl, rdx = ref.lm_head_cross_entropy(x, wr, t, 0.25, chunk=chunk)
    close(out[128][0], rl, 2e-5 * 4.0, 1e-5, "tile128 loss")
    close(out[128][1], rdx, 2e-6 * np.sqrt(V) * max(1.0, np.abs(rdx).max()), 1e-4, "tile128 dx")


def test_lm_head_widens_where_logits_take_128_tiles(gpu):
    """The f16 table's chunks are widened (matmul.wgsl widen, then b f32) exactly where the
    logits run on main8 and lm_head_widen is on; the gradient rows run on main unless forced."""
    rng = np.random.default_rng(5)
    x, w, t = case(rng, 9, 300, 16, 1.0)
    tx, tw, tt = gpu.tensor(x), gpu.table(w), gpu.tensor(t)
    launch = gpu._launch
    saved = gpu.matmul_tile, gpu.lm_head_widen

    def launches(tile, wide):
        seen = []
        gpu.matmul_tile, gpu.lm_head_widen = tile, wide
        gpu._launch = lambda op, *a, name=None, constants=None, **k: (
            seen.append((op, name, (constants or {}).get("B_F16"))), launch(
                op, *a, name=name, constants=constants, **k))
        try:
            gpu.numpy(gpu.lm_head_cross_entropy(tx, tw, tt, 1.0, chunk=128)[0])
        finally:
            del gpu._launch
            gpu.matmul_tile, gpu.lm_head_widen = saved
        return [s for s in seen if s[0] == "matmul"]
    assert launches(None, True) == [("matmul", None, 1)] * 6        # 9 rows: main, no widening
    got = launches(128, True)
    assert got == [("matmul", "widen", None), ("matmul", "main8", 0), ("matmul", "main8", 0)] * 3
    assert launches(128, False) == [("matmul", "main8", 1)] * 6


def test_widen_matches_reference(gpu):
    """matmul.wgsl widen: float16 elements from even and odd offsets, exactly."""
    from bitswarm.kernels.ops.matmul.gpu import widen
    from bitswarm.kernels.ops.matmul.reference import widen_f16
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((37, 21)) * 100).astype(F32)
    w[0, :4] = [0.0, -0.0, 6e-8, 65504.0]               # zero, -0, a subnormal, the largest
    tw = gpu.table(w)
    for off, rows, cols in [(0, 37, 21), (21 * 5, 7, 21), (3, 4, 5), (776, 1, 1)]:
        got = gpu.numpy(widen(gpu, tw, off, rows, cols)).reshape(-1)
        want = widen_f16(w.astype(np.float16), off, rows * cols)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    with pytest.raises(ValueError):
        widen_f16(w.astype(np.float16), 770, 10)


def test_f16_table_embedding_and_matmul(gpu, close):
    """Embedding gather and lm_head matmuls read the float16 table as float16 values, exactly."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((51, 33)).astype(F32)
    tw = gpu.table(w)
    w16 = w.astype(np.float16)
    np.testing.assert_array_equal(gpu.numpy(tw), w16)
    ids = rng.integers(-51, 51, 37).astype(np.int32)
    got = gpu.numpy(gpu.embedding(gpu.tensor(ids), tw))
    np.testing.assert_array_equal(got, embedding(ids, w16.astype(F32)))
    x = rng.standard_normal((7, 33)).astype(F32)
    logits = gpu.numpy(gpu.matmul(gpu.tensor(x), tw, trans_b=True))
    close(logits, x @ w16.astype(F32).T, 1e-5, 1e-5, "f16 matmul trans_b")
    d = rng.standard_normal((7, 51)).astype(F32)
    close(gpu.numpy(gpu.matmul(gpu.tensor(d), tw)), d @ w16.astype(F32), 1e-5, 1e-5,
          "f16 matmul")


def test_table_out_of_f16_range_stays_f32(gpu):
    w = np.array([[1e5, 0.0], [1.0, 2.0]], F32)
    tw = gpu.table(w)
    assert tw.dtype == "float32"
    np.testing.assert_array_equal(gpu.numpy(tw), w)


def test_lm_head_leaves_no_pooled_chunk(gpu):
    """The op's logits chunk is released, not pooled: allocated bytes return to the staref."""
    rng = np.random.default_rng(3)
    x, w, t = case(rng, 9, 300, 16, 1.0)
    tx, tw, tt = gpu.tensor(x), gpu.table(w), gpu.tensor(t)
    gpu.ctx.trim()
    before = gpu.ctx.allocated_bytes
    loss, dx = gpu.lm_head_cross_entropy(tx, tw, tt, 1.0, chunk=64)
    gpu.numpy(loss)
    live = loss.buffer.size + dx.buffer.size + 9 * 4 * 4 + gpu._dummy().buffer.size
    assert gpu.ctx.allocated_bytes - before <= live


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


def test_host_table_widened_chunks_same_bits(gpu):
    """A host-resident table streams its chunks through the widen path too (128 x 128 logits):
    the resident table's 64 x 64 bits."""
    from bitswarm.kernels.gpu_backend import GpuBackend
    host = GpuBackend(gpu.ctx, ste="f32", table_residency="host")
    rng = np.random.default_rng(7)
    x, w, t = case(rng, 70, 500, 24, 2.0)
    want = gpu.lm_head_cross_entropy(gpu.tensor(x), gpu.table(w), gpu.tensor(t), 0.5, chunk=128)
    host.matmul_tile = 128
    got = host.lm_head_cross_entropy(host.tensor(x), host.table(w), host.tensor(t), 0.5,
                                     chunk=128)
    for g, r in zip(got, want):
        np.testing.assert_array_equal(host.numpy(g), gpu.numpy(r))
