"""The elementwise ops (kernels/ops/elementwise/) on the GPU against their NumPy reference: add is
one rounding (exact), relu2_gate and its backward a few products (rtol 1e-6).
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops.elementwise import reference as ref

from .helpers import rnd


def test_add_and_relu2_gate(gpu, close):
    rng = np.random.default_rng(9)
    for shape in ((1, 1), (37, 300)):
        a, b, dh = rnd(rng, *shape, scale=100), rnd(rng, *shape), rnd(rng, *shape)
        ta, tb = gpu.tensor(a), gpu.tensor(b)
        np.testing.assert_array_equal(gpu.numpy(gpu.add(ta, tb)), ref.add(a, b))  # one rounding
        close(gpu.numpy(gpu.relu2_gate(ta, tb)), ref.relu2_gate(a, b), 0, 1e-6, "relu2_gate")
        dg, du = gpu.relu2_gate_backward(gpu.tensor(dh), ta, tb)
        rdg, rdu = ref.relu2_gate_backward(dh, a, b)
        close(gpu.numpy(dg), rdg, 0, 1e-6, "relu2_gate dg")
        close(gpu.numpy(du), rdu, 0, 1e-6, "relu2_gate du")
