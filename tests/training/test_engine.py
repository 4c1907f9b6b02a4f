"""Full-model backward of training/engine.py against float64 finite differences, and the
quantization-aware training loop on the NumPy backend.

As in test_model_grad.py, quantizers are piecewise constant: to check the chain rule itself, a
test backend and test ops replace both quantizers (absmax int8 activations, absmean ternary
weights) with the identity, which is exactly what the straight-through estimator assumes. Then
the STE gradient IS the true gradient and central differences must agree with it, for every
kind of parameter: projections, norm weights, the tied embedding.
"""
import dataclasses

import numpy as np

from bitswarm.kernels.ops import precision
from bitswarm.kernels.backend import CpuBackend
from bitswarm.formats.hf_checkpoint import load_bitnet, save_bitnet
from bitswarm.kernels.config import BitNetConfig, LoRAConfig, TernaryLinear
from bitswarm.kernels.model import BitNetModel
from bitswarm.training.engine import (PretrainModel, PRETRAIN_ADAMW,
                                       PretrainOptimizer, count_params, init_latent,
                                       param_shapes, to_weights)

CFG = BitNetConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10000.0)


class NoQuantBackend(CpuBackend):
    """CpuBackend in float64 with identity activation quantization."""

    def tensor(self, a):
        a = np.asarray(a)
        return np.array(a, dtype=np.int32 if a.dtype.kind in "iu" else np.float64)

    def quantize_act(self, x):
        return x, np.ones(x.shape[0])

    def bitlinear(self, xq, x_scale, w):
        return xq @ (w.codes / float(w.weight_scale)).T


class NoQuantOps(CpuBackend):
    """Identity weight quantizer: the 'codes' are the latent weight itself, scale 1."""

    def ternarize(self, w):
        return TernaryLinear(w, 1.0)


def test_full_grads_match_finite_differences(monkeypatch):
    monkeypatch.setattr(precision, "F32", np.float64)
    rng = np.random.default_rng(0)
    latent = {k: (v + (0.1 * rng.standard_normal(v.shape) if v.ndim == 1 else 0) * 1)
              for k, v in init_latent(CFG, seed=1, std=0.3).items()}
    model = PretrainModel(CFG, latent, NoQuantBackend(), NoQuantOps())
    ids = rng.integers(0, CFG.vocab_size, (2, 6)).astype(np.int32)
    ids[1, 2] = ids[0, 0]                      # a repeated id: the embedding scatter must sum
    tgt = rng.integers(0, CFG.vocab_size, (2, 6)).astype(np.int32)
    tgt[1, 4:] = -1
    loss_rows, count, grads = model.loss_and_full_grads(ids, tgt)
    assert count == 10 and set(grads) == set(param_shapes(CFG))

    def loss() -> float:
        model.refresh()
        return model.loss(ids, tgt)[0] / count

    h = 1e-6
    checked = 0
    for key in param_shapes(CFG):
        p = model.params[key]
        idxs = [tuple(int(rng.integers(0, s)) for s in p.shape) for _ in range(2)]
        if key == "embed_tokens":
            idxs.append((int(ids[0, 0]), 3))   # the row used twice
        for idx in idxs:
            orig = p[idx]
            p[idx] = orig + h
            lp = loss()
            p[idx] = orig - h
            lm = loss()
            p[idx] = orig
            num = (lp - lm) / (2 * h)
            got = grads[key][idx]
            assert abs(got - num) <= 1e-7 + 1e-4 * abs(num), (key, idx, got, num)
            checked += 1
    assert checked > 2 * len(param_shapes(CFG))


def test_quantized_training_reduces_loss_and_saves_exactly(tmp_path):
    """Real quantizers, NumPy backend: AdamW steps on one batch lower the loss; the packed
    checkpoint of the trained latent weights reproduces the training model's logits."""
    be = CpuBackend()
    model = PretrainModel(CFG, init_latent(CFG, seed=3), be)
    opt = PretrainOptimizer(model, dataclasses.replace(PRETRAIN_ADAMW, lr=1e-2))
    rng = np.random.default_rng(4)
    seq = rng.integers(0, CFG.vocab_size, (4, 17)).astype(np.int32)
    ids, tgt = seq[:, :-1], seq[:, 1:]
    losses = []
    for _ in range(30):
        rows, count, grads = model.loss_and_full_grads(ids, tgt)
        losses.append(float(np.sum(rows)) / count)
        opt.step(grads, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    save_bitnet(to_weights(CFG, model.latent_numpy()), tmp_path)
    loaded = BitNetModel(load_bitnet(tmp_path), be, LoRAConfig())
    np.testing.assert_array_equal(loaded.forward(ids), model.forward(ids))
    assert count_params(CFG) == sum(int(np.prod(s)) for s in param_shapes(CFG).values())
