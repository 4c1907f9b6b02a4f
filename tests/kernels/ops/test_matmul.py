"""The dense matmul (kernels/ops/matmul/) on the GPU against its NumPy reference, every
transpose / alpha / acc form, the split-K path included (fp32 sums: atol 2e-6 sqrt(K) alpha).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.ops.matmul import reference as ref

from .helpers import rnd


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


# LoRA's rank-r shapes (kernels/ops/matmul/skinny_*.wgsl): (M, K, N, trans_a, trans_b, acc,
# the kernel that must run). M/K/N not multiples of the kernels' 8 rows, 32 lanes, 64-row K
# blocks or 64-token slabs; r = 1, 8 and 16 (None: a shape the skinny kernels do not take).
SKINNY = [
    (300, 1000, 8, False, True, False, "rows"),        # h = x A^T
    (37, 68, 1, False, True, False, "rows"),           # r = 1
    (9, 4, 16, False, True, False, "rows"),
    (9, 21, 16, False, True, False, None),             # K % 4 != 0: the tiled kernel
    (37, 68, 8, False, False, False, None),            # dh = dy B: tiled (faster there)
    (132, 1000, 8, True, False, False, "cols"),        # dB = dy^T h: a (K, M), 15 slabs
    (68, 33, 16, True, False, False, "cols"),          # one slab
    (70, 33, 16, True, False, False, None),            # M % 4 != 0: the tiled kernel
    (8, 1000, 300, True, False, False, None),          # dA = dh^T x: tiled (faster there)
    (300, 8, 1000, False, True, True, "update"),       # y += s h B^T
    (37, 16, 70, False, False, True, "update"),        # dx += dh A
    (5, 1, 30, False, True, False, "update"),
]


@pytest.mark.parametrize("M,K,N,trans_a,trans_b,use_acc,kernel", SKINNY)
def test_matmul_skinny_lora_shapes(gpu, close, M, K, N, trans_a, trans_b, use_acc, kernel):
    """The LoRA shapes run on their skinny kernel and match the reference within the fp32
    tolerance of the tiled path (sums of K terms in another fixed order)."""
    rng = np.random.default_rng(9)
    a = rnd(rng, *((K, M) if trans_a else (M, K)))
    b = rnd(rng, *((N, K) if trans_b else (K, N)))
    acc = rnd(rng, M, N) if use_acc else None
    names = []
    launch = gpu._launch

    def recording(op, *args, name=None, **kw):
        names.append(name)
        return launch(op, *args, name=name, **kw)
    gpu._launch = recording
    try:
        got = gpu.numpy(gpu.matmul(gpu.tensor(a), gpu.tensor(b), trans_a=trans_a,
                                   trans_b=trans_b, alpha=1.5,
                                   acc=None if acc is None else gpu.tensor(acc)))
    finally:
        del gpu._launch
    assert names[0] == kernel, names
    want = ref.matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=1.5, acc=acc)
    close(got, want, 2e-6 * np.sqrt(K) * 1.5, 1e-5, f"skinny {kernel} {M}x{K}x{N}")


def _forced_tile(gpu, tile, fn, ks8=8, pairs=False):
    """fn() with gpu.matmul_tile, matmul_ks8, matmul_f16_pairs forced, and the (entry,
    constants) of the matmul launches it made."""
    names = []
    launch = gpu._launch

    def recording(op, *args, name=None, constants=None, **kw):
        if op == "matmul":
            names.append((name, constants or {}))
        return launch(op, *args, name=name, constants=constants, **kw)
    saved = gpu.matmul_tile, gpu.matmul_ks8, gpu.matmul_f16_pairs
    gpu.matmul_tile, gpu.matmul_ks8, gpu.matmul_f16_pairs = tile, ks8, pairs
    gpu._launch = recording
    try:
        return fn(), names
    finally:
        gpu.matmul_tile, gpu.matmul_ks8, gpu.matmul_f16_pairs = saved
        del gpu._launch


# 128 x 128 tiles (matmul.wgsl main8, K steps of 8 and 16) and f16 b tiles read in pairs
# (B_PAIRS, both tiles): edges that are not multiples of 128 (or of its 64-wide halves, its
# 4-wide groups or its K steps), odd K and N (no pairs then), one full tile, several; f16 b.
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,K,N,alpha,use_acc,f16", [(1, 1, 1, 1.0, False, False),
                                                     (129, 77, 203, 2.0, True, False),
                                                     (128, 64, 128, 1.0, False, True),
                                                     (250, 300, 131, 0.5, True, True),
                                                     (67, 1001, 70, 1.0, False, False),
                                                     (130, 33, 129, 1.0, True, True)])
def test_matmul_tile128_matches_reference_and_tile64_bits(gpu, close, trans_a, trans_b, M, K, N,
                                                          alpha, use_acc, f16):
    """main8 (each K step) and B_PAIRS against the reference (fp32 tolerance of the tiled path),
    and against main without pairs bit for bit: every output is the same sum of the same
    products in the same k order."""
    rng = np.random.default_rng(10)
    a = rnd(rng, *((K, M) if trans_a else (M, K)))
    b = rnd(rng, *((N, K) if trans_b else (K, N)))
    acc = rnd(rng, M, N) if use_acc else None
    tb = gpu.table(b) if f16 else gpu.tensor(b)
    assert tb.dtype == ("float16" if f16 else "float32")
    bh = b.astype(np.float16).astype(np.float32) if f16 else b

    def run():
        return gpu.numpy(gpu.matmul(gpu.tensor(a), tb, trans_a=trans_a, trans_b=trans_b,
                                    alpha=alpha, acc=None if acc is None else gpu.tensor(acc)))
    got4, n4 = _forced_tile(gpu, 64, run)
    want = ref.matmul(a, bh, trans_a=trans_a, trans_b=trans_b, alpha=alpha, acc=acc)
    close(got4, want, 2e-6 * np.sqrt(K) * alpha, 1e-5, f"main ta={trans_a} tb={trans_b}")
    tiled = M > 16 and N > 16 and K > 16      # not a skinny shape: the tiled kernel runs
    for tile, ks8, pairs in [(128, 8, False), (128, 16, False), (128, 16, True), (64, 8, True)]:
        got, names = _forced_tile(gpu, tile, run, ks8, pairs)
        if tiled:
            entry, consts = names[0]
            assert entry == ("main8" if tile == 128 else None), names
            row = K if trans_b else N
            assert consts["B_PAIRS"] == int(pairs and f16 and row % 2 == 0), names
            if tile == 128:
                assert consts["KS8"] == ks8, names
        np.testing.assert_array_equal(got, got4, f"tile {tile} ks8 {ks8} pairs {pairs}")


def test_matmul_f16_pairs_at_an_odd_offset(gpu):
    """A float16 b read from an odd element offset (a vocab chunk of an odd-length table row
    set) takes no pairs; the lm_head chunk offsets v0 * D with D even do."""
    from bitswarm.kernels.ops.matmul.gpu import launch_tiled
    seen = []
    launch = gpu._launch
    gpu._launch = lambda op, *a, constants=None, **k: seen.append(constants)
    try:
        for off, k in [(0, 64), (3, 64), (64, 63)]:
            launch_tiled(gpu, [None, None, None], 8, 8, dict(m=8, n=8, k=k, alpha=1.0, kchunk=k,
                                                           b_off=off), {"B_F16": 1, "TRANS_B": 1})
    finally:
        del gpu._launch
    assert [c["B_PAIRS"] for c in seen] == [int(gpu.matmul_f16_pairs), 0, 0]


def test_matmul_tile_choice(gpu):
    """128 x 128 tiles where at least MATMUL_T128_MIN of them fill the GPU (the lm_head's
    logits at 2B-4T 16 x 128 tokens), 64 x 64 below; the forced setting wins."""
    from bitswarm.kernels.ops.matmul.gpu import MATMUL_T128_MIN, matmul_tile
    assert MATMUL_T128_MIN == 512
    assert matmul_tile(gpu, 2048, 8192) == 128          # logits of one vocab chunk: 1,024 tiles
    assert matmul_tile(gpu, 2048, 2560) == 64           # gradient rows: 16 x 20 = 320 tiles
    assert matmul_tile(gpu, 512, 8192) == 64            # 4 x 128 tokens: 4 x 64 = 256 tiles
    assert matmul_tile(gpu, 1, 128256) == 64            # a decode step's logits: 1,002 tiles
    assert matmul_tile(gpu, 256, 128256) == 64          # a short prompt's
    saved = gpu.matmul_tile
    try:
        gpu.matmul_tile = 64
        assert matmul_tile(gpu, 2048, 8192) == 64
        gpu.matmul_tile = 128
        assert matmul_tile(gpu, 8, 8) == 128
        gpu.matmul_tile = 96
        with pytest.raises(ValueError):
            matmul_tile(gpu, 8, 8)
    finally:
        gpu.matmul_tile = saved


def test_general_matmul_stays_on_64_tiles_unless_forced(gpu):
    """The general matmul (evaluation / generation logits, pretraining weight gradients) keeps
    main at any shape; only a forced matmul_tile moves it (no GPU work: launches recorded)."""
    seen = []
    launch = gpu._launch
    gpu._launch = lambda op, *a, name=None, **k: seen.append(name)
    a = gpu._new((4096, 64))
    b = gpu.table(np.zeros((4096, 64), np.float32))     # f16: the tiled path at any shape
    saved = gpu.matmul_tile
    try:
        gpu.matmul(a, b, trans_b=True)                   # 32 x 32 = 1,024 tiles of 128
        gpu.matmul_tile = 128
        gpu.matmul(a, b, trans_b=True)
    finally:
        del gpu._launch
        gpu.matmul_tile = saved
    assert seen == [None, "main8"], seen
