"""The LoRA backward pass of kernels/model.py against finite differences.

Quantizers are piecewise constant, so their true derivative is zero where the straight-through
estimator says identity. To check the chain rule itself, a test backend replaces absmax int8
activation quantization with the identity (exactly what the STE assumes); then the STE gradient
IS the true gradient, and central differences in float64 must agree with it.
"""
import numpy as np
import pytest

from bitswarm.kernels.ops import precision
from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.config import BitNetConfig, BitNetWeights, LayerWeights, LoRAConfig, PROJECTIONS, TernaryLinear
from bitswarm.kernels.lora import init_lora
from bitswarm.kernels.model import BitNetModel

CFG = BitNetConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10000.0)


def tiny_weights(cfg: BitNetConfig, seed: int = 0) -> BitNetWeights:
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    layers = []
    for _ in range(cfg.num_hidden_layers):
        proj = {p: TernaryLinear(rng.integers(-1, 2, cfg.proj_shape(p)).astype(np.int8),
                                 np.float32(rng.uniform(0.5, 2.0))) for p in PROJECTIONS}
        layers.append(LayerWeights(1 + 0.1 * f(cfg.hidden_size), 1 + 0.1 * f(cfg.hidden_size),
                                   1 + 0.1 * f(cfg.hidden_size), 1 + 0.1 * f(cfg.intermediate_size), proj))
    return BitNetWeights(cfg, 0.5 * f(cfg.vocab_size, cfg.hidden_size), layers, 1 + 0.1 * f(cfg.hidden_size))


class NoQuantBackend(CpuBackend):
    """CpuBackend in float64 with identity activation quantization (see module docstring)."""

    def quantize_act(self, x):
        return x, np.ones(x.shape[0])

    def bitlinear(self, xq, x_scale, w):
        return xq @ (w.codes.astype(np.float64) / float(w.weight_scale)).T


@pytest.fixture(autouse=True)
def float64_reference(monkeypatch):
    # Run the reference in float64 so finite differences are meaningful.
    monkeypatch.setattr(precision, "F32", np.float64)


@pytest.mark.parametrize("targets", [("q_proj", "k_proj", "v_proj", "o_proj"), PROJECTIONS])
def test_lora_grads_match_finite_differences(targets):
    lcfg = LoRAConfig(rank=4, alpha=8.0, target_modules=targets)
    model = BitNetModel(tiny_weights(CFG), NoQuantBackend(), lcfg)
    rng = np.random.default_rng(1)
    state = {k: rng.standard_normal(v.shape) * 0.1 for k, v in init_lora(CFG, lcfg, 0).items()}
    model.lora = {k: v.astype(np.float64) for k, v in state.items()}
    ids = rng.integers(0, CFG.vocab_size, (2, 6)).astype(np.int32)
    tgt = rng.integers(0, CFG.vocab_size, (2, 6)).astype(np.int32)
    tgt[1, 4:] = -1   # padding is ignored by loss and gradient
    _, count, grads = model.loss_and_grads(ids, tgt)
    assert count == 10 and set(grads) == set(state)
    h = 1e-6
    for key in sorted(state)[:: max(1, len(state) // 8)]:
        for idx in [tuple(rng.integers(0, s) for s in state[key].shape) for _ in range(3)]:
            orig = model.lora[key][idx]
            model.lora[key][idx] = orig + h
            lp = model.loss(ids, tgt)[0] / count
            model.lora[key][idx] = orig - h
            lm = model.loss(ids, tgt)[0] / count
            model.lora[key][idx] = orig
            num = (lp - lm) / (2 * h)
            assert abs(grads[key][idx] - num) <= 1e-6 + 1e-4 * abs(num), (key, idx, grads[key][idx], num)


def test_fresh_adapter_leaves_base_model_unchanged():
    lcfg = LoRAConfig()
    w = tiny_weights(CFG)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, CFG.vocab_size, (1, 5)).astype(np.int32)
    base = BitNetModel(w, CpuBackend(), LoRAConfig(target_modules=("q_proj",)))
    base.set_lora({})
    adapted = BitNetModel(w, CpuBackend(), lcfg)
    adapted.set_lora(init_lora(CFG, lcfg, seed=3))   # B = 0 -> identical logits
    np.testing.assert_array_equal(base.forward(ids), adapted.forward(ids))
