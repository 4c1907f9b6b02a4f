"""BitNetModel's memory-saving training path (kernels/model.py loss_and_grads: recomputed layer
activations, chunked lm_head + loss) against the plain path (forward(keep=True) with every
activation saved, whole logits, cross_entropy, backward), and its GPU memory behaviour."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from bitswarm.kernels.backend import CpuBackend
from bitswarm.formats.hf_checkpoint import random_bitnet
from bitswarm.kernels.config import PROJECTIONS, BitNetConfig, LoRAConfig
from bitswarm.kernels.lora import init_lora
from bitswarm.kernels.model import BitNetModel

CFG = BitNetConfig(vocab_size=301, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0)


def weights(seed=0):
    w = random_bitnet(CFG, seed)
    # on the float16 grid, so GpuBackend's float16 table holds it exactly
    w.embed_tokens = (w.embed_tokens * 25).astype(np.float16).astype(np.float32)
    return w


def model(be, targets=PROJECTIONS, seed=0):
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=targets)
    m = BitNetModel(weights(), be, lcfg)
    rng = np.random.default_rng(seed)
    m.set_lora({k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32)
                for k, v in init_lora(CFG, lcfg, 0).items()})
    return m


def batch(seed=1, B=2, T=7):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    tg = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    tg[1, 5:] = -1
    return ids, tg


def plain_loss_and_grads(m, ids, tg):
    """The unchunked, save-everything path (what loss_and_grads did before recomputation)."""
    t = tg.reshape(-1).astype(np.int32)
    count = int(np.sum(t >= 0))
    logits, saved = m.forward(ids, keep=True)
    loss, dlogits = m.be.cross_entropy(logits, m.be.tensor(t), 1.0 / count)
    grads = m.backward(dlogits, saved)
    return float(np.sum(m.be.numpy(loss), dtype=np.float64)) / count, grads


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("targets", [("q_proj", "k_proj", "v_proj", "o_proj"), PROJECTIONS])
def test_recomputed_path_equals_plain_path_cpu(targets, recompute, close):
    m = model(CpuBackend(), targets)
    assert m.recomputes(10**6) is False   # NumPy default: host memory is not the limit
    m.recompute = recompute
    ids, tg = batch()
    loss, count, grads = m.loss_and_grads(ids, tg)
    ploss, pgrads = plain_loss_and_grads(m, ids, tg)
    assert count == 12 and set(grads) == set(pgrads)
    assert abs(loss - ploss) <= 1e-6 * abs(ploss)
    for k in grads:     # same ops on the same inputs; only the vocab-chunk sums differ
        close(grads[k], pgrads[k], 1e-6 * max(1e-3, np.abs(pgrads[k]).max()), 1e-4, k)
    nats, n = m.loss(ids, tg)
    assert n == count and abs(nats / n - loss) <= 1e-6 * loss


def test_recomputed_path_equals_plain_path_gpu(gpu, close):
    m = model(gpu)
    m.recompute = True
    ids, tg = batch()
    loss, _, grads = m.loss_and_grads(ids, tg)
    ploss, pgrads = plain_loss_and_grads(m, ids, tg)
    assert abs(loss - ploss) <= 1e-5 * abs(ploss)
    for k in grads:
        g, p = gpu.numpy(grads[k]), gpu.numpy(pgrads[k])
        close(g, p, 1e-4 * max(1e-3, np.abs(p).max()), 1e-3, k)


def test_auto_recomputation_follows_the_activation_estimate(gpu):
    """Auto (recompute None): on for a GPU backend once the estimated saved activations exceed
    RECOMPUTE_ABOVE, off below it and always off on NumPy; True/False force it."""
    from bitswarm.kernels.model import RECOMPUTE_ABOVE
    m = model(gpu)
    per_row = m.saved_activation_bytes(1)
    assert per_row == CFG.num_hidden_layers * 4 * (4 * 64 + 3 * 64 + 2 * 32 + 4 * 96)
    small, big = RECOMPUTE_ABOVE // per_row, RECOMPUTE_ABOVE // per_row + 1
    assert m.recomputes(small) is False and m.recomputes(big) is True
    m.recompute = False
    assert m.recomputes(big) is False
    assert model(CpuBackend()).recomputes(big) is False


def test_training_memory_is_flat_and_below_plain_path(gpu):
    """Peak allocated bytes of loss_and_grads stay the same from step to step (recomputation
    does not grow the pool) and are below those of the plain path on the same model."""
    ids, tg = batch(B=4, T=32)
    ctx = gpu.ctx

    def peak_of(fn, steps):
        m = model(gpu)
        gc.collect()
        ctx.trim()
        ctx.reset_peak()
        base = ctx.allocated_bytes
        peaks = []
        for _ in range(steps):
            fn(m)
            gc.collect()
            peaks.append(ctx.peak_allocated_bytes - base)
        del m
        gc.collect()
        return peaks

    def recomputed(m):
        m.recompute = True
        return m.loss_and_grads(ids, tg)

    ours = peak_of(recomputed, 3)
    plain = peak_of(lambda m: plain_loss_and_grads(m, ids, tg), 1)
    assert ours[1] == ours[2], ours
    assert ours[2] < plain[0], (ours, plain)
