"""The AdamW step (kernels/ops/adamw/) on the GPU against its NumPy reference, three steps with
gradients over four binades (m, v rtol 1e-6; p atol 1e-7 + rtol 1e-6).
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops.adamw import reference as ref

from .helpers import rnd

F32 = np.float32


def test_adamw(gpu, close):
    rng = np.random.default_rng(13)
    p, m, v = rnd(rng, 37, 21), np.zeros((37, 21), F32), np.zeros((37, 21), F32)
    tp, tm, tv = gpu.tensor(p), gpu.tensor(m), gpu.tensor(v)
    for step in range(1, 4):
        g = rnd(rng, 37, 21, scale=10.0 ** (step - 2))
        kw = dict(step=step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        ref.adamw_(p, g, m, v, **kw)
        gpu.adamw_(tp, gpu.tensor(g), tm, tv, **kw)
    close(gpu.numpy(tm), m, 0, 1e-6, "adamw m")
    close(gpu.numpy(tv), v, 0, 1e-6, "adamw v")
    close(gpu.numpy(tp), p, 1e-7, 1e-6, "adamw p")
