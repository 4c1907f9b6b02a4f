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


def test_adamw_steps_reuse_their_bind_groups_and_interleave(gpu, close):
    """Two parameters at different step counts, updated alternately without a sync between (two
    optimizers in one process: the node loop benchmark's node and benchmark models): each
    dispatch reads its own step's bias corrections (they live in one buffer, rewritten in
    encoder order), and after the first round of steps no dispatch builds a new bind group."""
    rng = np.random.default_rng(14)
    host = [[rnd(rng, 19, 8), np.zeros((19, 8), F32), np.zeros((19, 8), F32)] for _ in range(2)]
    dev = [[gpu.tensor(a) for a in h] for h in host]
    grads = [[rnd(rng, 19, 8) for _ in range(4)] for _ in range(2)]
    gdev = [gpu.tensor(gs[0]) for gs in grads]      # one gradient buffer each, as in training
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    created = []
    for i in range(4):
        before = len(gpu.ctx._bg_cache)
        for j, first_step in enumerate((1, 7)):     # one at steps 1..4, one at 7..10
            ref.adamw_(*host[j][:1], grads[j][i], *host[j][1:], step=first_step + i, **kw)
            gpu.assign(gdev[j], grads[j][i])
            gpu.adamw_(dev[j][0], gdev[j], dev[j][1], dev[j][2], step=first_step + i, **kw)
        created.append(len(gpu.ctx._bg_cache) - before)
    for j in range(2):
        for name, t, want in zip("pmv", dev[j], host[j]):
            close(gpu.numpy(t), want, 1e-7, 1e-6, f"adamw {name}{j}")
    assert created[1:] == [0, 0, 0], created
