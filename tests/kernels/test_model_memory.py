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


def test_auto_recomputation_follows_the_activation_estimate(gpu, monkeypatch):
    """Auto (recompute None) without a budget: every layer recomputed on a GPU backend once the
    estimated saved activations exceed RECOMPUTE_ABOVE, none below it, none ever on NumPy;
    True/False force all / none. (Where the runtime reports a discrete GPU's memory, that sets
    a budget instead: the next tests; here it is unknown, as on wgpu-native.)"""
    from bitswarm.kernels.model import RECOMPUTE_ABOVE
    monkeypatch.setattr(gpu.ctx, "device_memory", None, raising=False)
    m = model(gpu)
    L = CFG.num_hidden_layers
    per_row = m.saved_activation_bytes(1)
    assert per_row == L * 4 * (4 * 64 + 3 * 64 + 2 * 32 + 4 * 96)
    assert m.saved_activation_bytes(5) == L * m.layer_activation_bytes(5)
    small, big = RECOMPUTE_ABOVE // per_row, RECOMPUTE_ABOVE // per_row + 1
    assert m.recomputed_layers(small) == 0 and m.recomputed_layers(big) == L
    assert m.recomputes(small) is False and m.recomputes(big) is True
    m.recompute = False
    assert m.recomputed_layers(big) == 0 and m.recomputes(big) is False
    m.recompute = True
    assert m.recomputed_layers(small) == L
    cpu = model(CpuBackend())
    assert cpu.recomputed_layers(big) == 0
    cpu.activation_budget = 0                   # a budget does not make NumPy recompute
    assert cpu.recomputed_layers(big) == 0


def test_layers_saved_within_an_activation_budget(gpu):
    """k layers fit in a budget when k full layers plus the L - k recomputed layers' inputs do:
    k * S + (L - k) * R <= budget, S = 4 B x (4 D + 3 qd + 2 kvd + 4 I) per row, R = 4 B x D."""
    m = model(gpu)
    L, N = CFG.num_hidden_layers, 14
    S, R = N * 4 * (4 * 64 + 3 * 64 + 2 * 32 + 4 * 96), N * 4 * 64
    assert (m.layer_activation_bytes(N), m.layer_input_bytes(N)) == (S, R) == (50176, 3584)
    for k in range(2, L + 1):
        cost = k * S + (L - k) * R
        assert m.layers_within(cost, N) == k and m.layers_within(cost - 1, N) == k - 1
    # the last layer is always saved: recomputing it too peaks as high (see the memory test)
    assert [m.layers_within(b, N) for b in (0, S + 2 * R - 1, S + 2 * R, 10**12)] == [1, 1, 1, L]
    m.activation_budget = S + 2 * R             # one layer saved, two recomputed
    assert m.recomputed_layers(N) == 2 and m.recomputes(N) is True
    m.activation_budget = L * S
    assert m.recomputed_layers(N) == 0 and m.recomputes(N) is False
    m.activation_budget = 0
    assert m.recomputed_layers(N) == L - 1
    m.recompute = True                          # on / off override the budget
    assert m.recomputed_layers(N) == L
    m.recompute = False
    assert m.recomputed_layers(N) == 0


def test_default_budget_is_a_share_of_the_gpus_memory(gpu, monkeypatch):
    """Without --activation-memory, a backend that knows its discrete GPU's memory (Dawn)
    budgets 1 / DEVICE_MEMORY_SHARE of it; an explicit budget wins; without either, the
    RECOMPUTE_ABOVE rule (all or none)."""
    from bitswarm.kernels.model import DEVICE_MEMORY_SHARE, RECOMPUTE_ABOVE
    m = model(gpu)
    L, N = CFG.num_hidden_layers, 14
    S, R = m.layer_activation_bytes(N), m.layer_input_bytes(N)
    monkeypatch.setattr(gpu.ctx, "device_memory", DEVICE_MEMORY_SHARE * (S + 2 * R), raising=False)
    assert m.effective_activation_budget() == S + 2 * R
    assert m.recomputed_layers(N) == 2                       # one layer saved, as budgeted
    monkeypatch.setattr(gpu.ctx, "device_memory", DEVICE_MEMORY_SHARE * L * S)
    assert m.recomputed_layers(N) == 0
    m.activation_budget = 0                                  # the flag wins over the memory
    assert m.effective_activation_budget() == 0 and m.recomputed_layers(N) == L - 1
    m.activation_budget = None
    monkeypatch.setattr(gpu.ctx, "device_memory", None)
    assert m.effective_activation_budget() is None
    big = RECOMPUTE_ABOVE // m.saved_activation_bytes(1) + 1
    assert m.recomputed_layers(N) == 0 and m.recomputed_layers(big) == L


def test_gradients_are_bit_identical_whatever_the_split(gpu):
    """All layers recomputed, none, and partial splits give the same loss and the same bits in
    every LoRA gradient: the recomputed forward is the same op sequence on the same input."""
    m = model(gpu)
    ids, tg = batch()
    N = ids.size
    S, R = m.layer_activation_bytes(N), m.layer_input_bytes(N)
    runs = {}
    for name, recompute, budget, n_rec in [("all", True, None, 3), ("none", False, None, 0),
                                           ("save 1", None, 0, 2),
                                           ("save 2", None, 2 * S + R, 1)]:
        m.recompute, m.activation_budget = recompute, budget
        assert m.recomputed_layers(N) == n_rec, name
        loss, count, grads = m.loss_and_grads(ids, tg)
        runs[name] = loss, count, {k: gpu.numpy(v) for k, v in grads.items()}
    loss, count, grads = runs["all"]
    assert len(grads) == 2 * len(PROJECTIONS) * CFG.num_hidden_layers
    for name, (l2, c2, g2) in runs.items():
        assert (l2, c2) == (loss, count), name
        assert g2.keys() == grads.keys(), name
        for k in grads:
            np.testing.assert_array_equal(g2[k], grads[k], err_msg=f"{name}: {k}")


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


def test_saving_the_last_layers_peaks_at_the_estimate(gpu):
    """Peak allocated bytes of loss_and_grads per split: saving the last layer costs no more
    than recomputing every layer (the backward then holds one recomputed layer's activations
    instead), and each further saved layer adds about one layer's activations (S - R
    estimated, within pool rounding of S)."""
    ids, tg = batch(B=4, T=32)
    N, L, ctx = ids.size, CFG.num_hidden_layers, gpu.ctx
    peaks = []
    for saved in range(L + 1):
        m = model(gpu)
        S, R = m.layer_activation_bytes(N), m.layer_input_bytes(N)
        if saved == 0:
            m.recompute = True
        else:
            m.activation_budget = saved * S + (L - saved) * R
        assert m.recomputed_layers(N) == L - saved
        gc.collect()
        ctx.trim()
        ctx.reset_peak()
        base = ctx.allocated_bytes
        for _ in range(2):          # the second step's peak: the pool has its buffers
            m.loss_and_grads(ids, tg)
            gc.collect()
        peaks.append(ctx.peak_allocated_bytes - base)
        del m
        gc.collect()
    assert peaks[1] <= peaks[0], peaks
    for a, b in zip(peaks[1:], peaks[2:]):
        assert S - R <= b - a <= S, (peaks, S, R)
