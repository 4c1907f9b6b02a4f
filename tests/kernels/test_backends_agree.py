"""Whole sequences of ops on GpuBackend (WGSL; lavapipe on CI) against CpuBackend (the family
references): a float attention block forward and backward written once against `Backend`,
kernels/model.py's loss and LoRA gradients, and one full quantization-aware training step of
training/engine.py (same ternary codes on both; fp32 sums in other orders: rtol 1e-4..2e-3).
"""
from __future__ import annotations

import numpy as np
import pytest

from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.config import BitNetConfig
from bitswarm.kernels.ops.bitlinear.gpu import pack_codes_2bit
from bitswarm.training.engine import PretrainModel, init_latent

from .ops.helpers import rnd, ternary

F32 = np.float32


def _attention_block(be, ids, P, B, T, Hq, Hkv, hd, targets):
    """A tiny float attention block and its backward, written once against any Backend:
    embed -> rmsnorm -> q/k/v (matmul) -> rope -> attention -> o (matmul) -> residual ->
    rmsnorm -> relu2 MLP -> lm_head -> cross_entropy; then every backward op and an AdamW step."""
    t = {k: be.tensor(v) for k, v in P.items()}
    x = be.embedding(be.tensor(ids), t["emb"])
    n, r1 = be.rmsnorm(x, t["ln1"], 1e-5)
    q = be.rope(be.matmul(n, t["wq"], trans_b=True), T, Hq, hd, 10000.0)
    k = be.rope(be.matmul(n, t["wk"], trans_b=True), T, Hkv, hd, 10000.0)
    v = be.matmul(n, t["wv"], trans_b=True)
    o, lse = be.attention(q, k, v, B, T, Hq, Hkv, hd)
    x1 = be.add(x, be.matmul(o, t["wo"], trans_b=True))
    n2, r2 = be.rmsnorm(x1, t["ln2"], 1e-5)
    g, u = be.matmul(n2, t["wg"], trans_b=True), be.matmul(n2, t["wu"], trans_b=True)
    x2 = be.add(x1, be.matmul(be.relu2_gate(g, u), t["wd"], trans_b=True, alpha=0.5))
    logits = be.matmul(x2, t["emb"], trans_b=True)
    loss, dlog = be.cross_entropy(logits, be.tensor(targets), 1.0 / len(targets))
    dx2 = be.matmul(dlog, t["emb"])
    grads = {"wd": be.matmul(dx2, be.relu2_gate(g, u), trans_a=True, alpha=0.5)}
    dh = be.matmul(dx2, t["wd"], alpha=0.5)
    dg, du = be.relu2_gate_backward(dh, g, u)
    dn2 = be.matmul(du, t["wu"], acc=be.matmul(dg, t["wg"]))
    dx1 = be.add(dx2, be.rmsnorm_backward(dn2, x1, t["ln2"], r2))
    grads["wo"] = be.matmul(dx1, o, trans_a=True)
    do = be.matmul(dx1, t["wo"])
    dq, dk, dv = be.attention_backward(do, q, k, v, o, lse, B, T, Hq, Hkv, hd)
    dq = be.rope(dq, T, Hq, hd, 10000.0, inverse=True)
    dk = be.rope(dk, T, Hkv, hd, 10000.0, inverse=True)
    grads["wq"] = be.matmul(dq, n, trans_a=True)
    grads["wk"] = be.matmul(dk, n, trans_a=True)
    grads["wv"] = be.matmul(dv, n, trans_a=True)
    dn = be.matmul(dv, t["wv"], acc=be.matmul(dk, t["wk"], acc=be.matmul(dq, t["wq"])))
    grads["dx"] = be.add(dx1, be.rmsnorm_backward(dn, x, t["ln1"], r1))
    wq, m, vv = t["wq"], be.zeros_like(t["wq"]), be.zeros_like(t["wq"])
    be.adamw_(wq, grads["wq"], m, vv, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.01)
    out = {k: be.numpy(v) for k, v in grads.items()}
    out["loss"], out["wq_new"] = be.numpy(loss), be.numpy(wq)
    return out


def attention_block_case(rng) -> tuple:
    """Inputs of _attention_block: (ids, P, B, T, Hq, Hkv, hd, targets), one target ignored."""
    B, T, Hq, Hkv, hd, D, I, V = 2, 5, 4, 2, 8, 32, 24, 41
    P = {"emb": rnd(rng, V, D), "ln1": 1 + rnd(rng, D, scale=0.1), "ln2": 1 + rnd(rng, D, scale=0.1),
         "wq": rnd(rng, Hq * hd, D, scale=0.2), "wk": rnd(rng, Hkv * hd, D, scale=0.2),
         "wv": rnd(rng, Hkv * hd, D, scale=0.2), "wo": rnd(rng, D, Hq * hd, scale=0.2),
         "wg": rnd(rng, I, D, scale=0.2), "wu": rnd(rng, I, D, scale=0.2), "wd": rnd(rng, D, I, scale=0.2)}
    ids = rng.integers(0, V, B * T).astype(np.int32)
    tg = rng.integers(0, V, B * T).astype(np.int32)
    tg[3] = -1
    return ids, P, B, T, Hq, Hkv, hd, tg


def test_attention_block_forward_backward_matches_cpu(gpu, close):
    case = attention_block_case(np.random.default_rng(14))
    want = _attention_block(CpuBackend(), *case)
    got = _attention_block(gpu, *case)
    for key in want:
        close(got[key], want[key], 1e-5 * max(1.0, np.abs(want[key]).max()), 1e-4, f"block {key}")


@pytest.mark.parametrize("ste", ["f32", "f16", "i16", "i8"])
def test_bitnet_model_loss_and_lora_grads_match_cpu(gpu, close, ste):
    """kernels/model.py (all ops, W1.58A8 included) on the GPU vs the NumPy backend; with the
    STE input gradient in fp32, on its f16 path (GpuBackend.ste_precision; error per STE
    call ~1e-3 of |dy| |W|, reference.bitlinear_backward_f16) and on its int paths (i16: dy to
    15 bits per row, ~3e-5 of max|dy|; i8: 8 bits, ~4e-3; reference.bitlinear_backward_int)."""
    model_mod = pytest.importorskip("bitswarm.kernels.model")
    if ste == "f16" and "shader-f16" not in gpu.ctx.features:
        pytest.skip("adapter lacks shader-f16")
    from bitswarm.kernels.config import (PROJECTIONS, BitNetConfig, BitNetWeights, LayerWeights,
                                         LoRAConfig)
    from bitswarm.kernels.lora import init_lora
    cfg = BitNetConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       rope_theta=10000.0)
    rng = np.random.default_rng(15)
    f = lambda *s: rnd(rng, *s)  # noqa: E731
    proj = {p: ternary(rng, *cfg.proj_shape(p), ws=float(rng.uniform(0.5, 2))) for p in PROJECTIONS}
    layer = LayerWeights(1 + 0.1 * f(32), 1 + 0.1 * f(32), 1 + 0.1 * f(32), 1 + 0.1 * f(48), proj)
    # GpuBackend stores the tied table as float16 (CpuBackend: float32); a table already on the
    # float16 grid is held exactly by both, so the comparison below is of the math alone.
    embed = (0.5 * f(37, 32)).astype(np.float16).astype(F32)
    weights = BitNetWeights(cfg, embed, [layer], 1 + 0.1 * f(32))
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=PROJECTIONS)
    state = {k: (rng.standard_normal(v.shape) * 0.1).astype(F32)
             for k, v in init_lora(cfg, lcfg, 0).items()}
    ids = rng.integers(0, 37, (2, 6)).astype(np.int32)
    tg = rng.integers(0, 37, (2, 6)).astype(np.int32)
    tg[1, 4:] = -1
    results = []
    saved = gpu.ste_precision
    gpu.ste_precision = ste
    try:
        for be in (CpuBackend(), gpu):
            m = model_mod.BitNetModel(weights, be, lcfg)
            m.set_lora(state)
            loss, count, grads = m.loss_and_grads(ids, tg)
            results.append((loss, {k: be.numpy(g) for k, g in grads.items()}))
    finally:
        gpu.ste_precision = saved
    (lc, gc_), (lg, gg) = results
    # A last-ulp difference before an absmax quantizer can move one int8 code by 1 (both are
    # faithful roundings), so the comparison allows a few quantization steps of slack.
    assert abs(lg - lc) <= 1e-4 * abs(lc), (lg, lc)
    assert set(gg) == set(gc_)
    # f16 STE: each dx carries ~2^-11-level rounding (measured here: up to 1.6e-3 of max|grad|
    # in q_proj's LoRA grads, the deepest in the backward), so twice the fp32 tolerance
    # i16 STE, measured here: 1.4e-4 of max|grad| (f32: 8e-7, f16: 1.6e-3). i8: dy rounded to
    # 2^-7 of its row's max per element, measured 2.7e-2 of max|grad|: a deliberate precision
    # trade (SwitchBack, arXiv:2304.13013), so its own looser tolerance
    tol = {"f32": 2e-3, "f16": 4e-3, "i16": 2e-3, "i8": 6e-2}[ste]
    for k in gc_:
        close(gg[k], gc_[k], tol * max(1e-3, np.abs(gc_[k]).max()), tol, f"model grad {k}")


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_a_new_rounds_adapter_overwrites_the_same_tensors(gpu, backend):
    """set_lora with the same keys and shapes (the next round's global adapter) overwrites the
    tensors in place, so the GPU's bind groups naming them stay cached, and the model then
    computes exactly what a model given that adapter fresh computes; other shapes get new
    tensors; a wrong shape is refused by `assign` with a ValueError naming both shapes."""
    from bitswarm.kernels.config import (PROJECTIONS, BitNetConfig, BitNetWeights, LayerWeights,
                                         LoRAConfig)
    from bitswarm.kernels.lora import init_lora
    from bitswarm.kernels.model import BitNetModel
    be = gpu if backend == "gpu" else CpuBackend()
    cfg = BitNetConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       rope_theta=10000.0)
    rng = np.random.default_rng(4)
    f = lambda *s: rnd(rng, *s)  # noqa: E731
    proj = {p: ternary(rng, *cfg.proj_shape(p), ws=1.0) for p in PROJECTIONS}
    layer = LayerWeights(1 + 0.1 * f(32), 1 + 0.1 * f(32), 1 + 0.1 * f(32), 1 + 0.1 * f(48), proj)
    embed = (0.5 * f(37, 32)).astype(np.float16).astype(F32)
    weights = BitNetWeights(cfg, embed, [layer], 1 + 0.1 * f(32))
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "o_proj"))
    first, second = ({k: (rng.standard_normal(v.shape) * 0.1).astype(F32)
                      for k, v in init_lora(cfg, lcfg, 0).items()} for _ in range(2))
    ids = rng.integers(0, 37, (2, 6)).astype(np.int32)
    reused = BitNetModel(weights, be, lcfg)
    reused.set_lora(first)
    reused.loss_and_grads(ids, ids)                  # a round's steps read the first adapter
    held = dict(reused.lora)
    reused.set_lora(second)
    assert all(reused.lora[k] is held[k] for k in held)
    fresh = BitNetModel(weights, be, lcfg)
    fresh.set_lora(second)
    got, want = reused.get_lora(), fresh.get_lora()
    assert all(np.array_equal(got[k], second[k]) and np.array_equal(want[k], second[k])
               for k in second)
    (l1, _, g1), (l2, _, g2) = reused.loss_and_grads(ids, ids), fresh.loss_and_grads(ids, ids)
    assert l1 == l2
    assert all(np.array_equal(be.numpy(g1[k]), be.numpy(g2[k])) for k in g2)
    wider = {k: np.zeros((v.shape[0] * 2, v.shape[1]) if "lora_A" in k else
                         (v.shape[0], v.shape[1] * 2), F32) for k, v in second.items()}
    reused.set_lora(wider)                            # another rank: new tensors
    assert all(reused.lora[k] is not held[k] for k in held)
    k0 = next(iter(held))
    with pytest.raises(ValueError, match=r"shape \(1, 2\) != tensor shape"):
        be.assign(held[k0], np.zeros((1, 2), F32))


def test_full_training_step_gpu_matches_cpu(gpu, close):
    cfg = BitNetConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       rope_theta=10000.0)
    latent = init_latent(cfg, seed=5)
    cpu_m = PretrainModel(cfg, latent, CpuBackend())
    gpu_m = PretrainModel(cfg, latent, gpu)
    # Same codes on both (a scale differing by an ulp could flip a boundary weight).
    for Lc, Lg in zip(cpu_m.layers, gpu_m.layers):
        for p, h in Lg.items():
            if hasattr(h, "packed"):
                np.testing.assert_array_equal(gpu.numpy(h.packed).view(np.uint32),
                                              pack_codes_2bit(Lc[p].codes))
    rng = np.random.default_rng(6)
    seq = rng.integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    ids, tgt = seq[:, :-1], seq[:, 1:]
    lc, nc, gc = cpu_m.loss_and_full_grads(ids, tgt)
    lg, ng, gg = gpu_m.loss_and_full_grads(ids, tgt)
    assert nc == ng
    close(gpu.numpy(lg), lc, 1e-4, 1e-4, "loss rows")
    for k in sorted(gc):
        close(gpu.numpy(gg[k]), gc[k], 2e-4, 2e-3, k)
