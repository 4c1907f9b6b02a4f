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
