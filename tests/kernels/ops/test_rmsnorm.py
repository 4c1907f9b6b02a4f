"""The RMSNorm family (kernels/ops/rmsnorm/) on the GPU against its NumPy reference: forward,
input gradient, and the weight gradient of pretraining (fp32 sums in a different order:
atol 1e-5, rtol 1e-4).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.ops.rmsnorm import reference as ref

from .helpers import rnd

F32 = np.float32


@pytest.mark.parametrize("N,C,scale", [(1, 7, 1.0), (37, 300, 1.0), (5, 1000, 1e4), (3, 64, 1e-3)])
def test_rmsnorm_forward_backward(gpu, close, N, C, scale):
    rng = np.random.default_rng(3)
    x, w, dy = rnd(rng, N, C, scale=scale), 1 + rnd(rng, C, scale=0.1), rnd(rng, N, C)
    y, rstd = gpu.rmsnorm(gpu.tensor(x), gpu.tensor(w), 1e-5)
    ry, rr = ref.rmsnorm(x, w, 1e-5)
    close(gpu.numpy(y), ry, 1e-6, 2e-6, "rmsnorm y")
    close(gpu.numpy(rstd), rr, 0, 2e-6, "rmsnorm rstd")
    dx = gpu.rmsnorm_backward(gpu.tensor(dy), gpu.tensor(x), gpu.tensor(w), rstd)
    rdx = ref.rmsnorm_backward(dy, x, w, rr)
    close(gpu.numpy(dx), rdx, 1e-5 * np.abs(rdx).max(), 1e-5, "rmsnorm_backward dx")


def test_rmsnorm_weight_grad(gpu, close):
    rng = np.random.default_rng(2)
    for N, C in ((1, 5), (130, 37)):           # 130 rows: three partial chunks of 64
        dy, x = rng.standard_normal((N, C)).astype(F32), rng.standard_normal((N, C)).astype(F32)
        _, rstd = ref.rmsnorm(x, np.ones(C, F32), 1e-5)
        got = gpu.numpy(gpu.rmsnorm_weight_grad(gpu.tensor(dy), gpu.tensor(x), gpu.tensor(rstd)))
        close(got, ref.rmsnorm_weight_grad(dy, x, rstd), 1e-5, 1e-4, f"rmsnorm dw N={N}")


def test_reference_rmsnorm_weight_grad():
    rng = np.random.default_rng(5)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    _, rstd = ref.rmsnorm(x, np.ones(5, np.float32), 1e-5)
    np.testing.assert_allclose(ref.rmsnorm_weight_grad(dy, x, rstd),
                               (dy * x * rstd[:, None]).sum(0), rtol=1e-6)
