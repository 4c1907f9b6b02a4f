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
