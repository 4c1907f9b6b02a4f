"""The embedding family (kernels/ops/embedding/) on the GPU (lavapipe on CI) against its NumPy
reference: the gather is a copy (exact); the backward sums positions in the same order as
np.add.at (exact).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.ops.embedding import reference as ref

from .helpers import rnd

F32 = np.float32


def test_embedding(gpu, close):
    rng = np.random.default_rng(2)
    table = rnd(rng, 50, 33)
    for ids in (np.array([7], np.int32), rng.integers(-50, 50, 37).astype(np.int32)):
        got = gpu.numpy(gpu.embedding(gpu.tensor(ids), gpu.tensor(table)))
        np.testing.assert_array_equal(got, ref.embedding(ids, table))      # a copy: exact
    with pytest.raises(IndexError):
        gpu.embedding(gpu.tensor(np.array([50], np.int32)), gpu.tensor(table))


def test_embedding_backward_exact(gpu):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 11, 50).astype(np.int32)          # many repeats, some ids unseen
    dy = rng.standard_normal((50, 19)).astype(F32)
    got = gpu.numpy(gpu.embedding_backward(ids, gpu.tensor(dy), 13))
    np.testing.assert_array_equal(got, ref.embedding_backward(ids, dy, 13))


def test_reference_embedding_backward_and_csr():
    rng = np.random.default_rng(5)
    ids = np.array([3, 1, 3, 0], np.int32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    dE = ref.embedding_backward(ids, dy, 6)
    np.testing.assert_array_equal(dE[3], dy[0] + dy[2])
    assert not dE[5].any()
    with pytest.raises(IndexError):
        ref.embedding_backward(np.array([6]), dy[:1], 6)
    row_ptr, pos = ref.token_csr(ids, 6)
    assert row_ptr.tolist() == [0, 1, 2, 2, 4, 4, 4] and pos.tolist() == [3, 1, 0, 2]
