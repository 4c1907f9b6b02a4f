"""The online `autobitlinear` layout (save_bitnet(latent=True), hf_checkpoint.latent_weight):
latent float32 weights whose absmean ternarization gives back the codes and scale, in any
summation order (so transformers' WeightQuant, in torch's order, agrees with bitswarm's)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitswarm.formats.hf_checkpoint import (absmean_ternarize, latent_weight, load_bitnet,
                                            random_bitnet, save_bitnet)
from bitswarm.formats.tokenizer import byte_level_tokenizer
from bitswarm.kernels.backend import CpuBackend
from bitswarm.kernels.config import PROJECTIONS, BitNetConfig, LoRAConfig, TernaryLinear
from bitswarm.kernels.model import BitNetModel

PACKAGED = Path(__file__).resolve().parents[2] / "node" / "default_model"


def _f32_means(w: np.ndarray) -> set:
    """mean|W| in float32 summed three ways: NumPy's pairwise order, left to right, reversed."""
    a = np.abs(w).reshape(-1)
    n = np.float32(a.size)
    return {np.float32(a.sum(dtype=np.float32) / n), np.float32(np.cumsum(a, dtype=np.float32)[-1] / n),
            np.float32(np.cumsum(a[::-1], dtype=np.float32)[-1] / n)}


def _check(t: TernaryLinear) -> bool:
    w, exact = latent_weight(t)
    assert w.dtype == np.float32 and w.shape == t.codes.shape
    back = absmean_ternarize(w)
    np.testing.assert_array_equal(back.codes, t.codes)       # codes always exact
    means = _f32_means(w)
    assert len(means) == 1                                    # order-independent sum
    torch_like = np.float32(1) / means.pop()
    if exact:
        assert back.weight_scale == t.weight_scale == torch_like
    else:   # no float32 mean maps back to this scale: within an ulp
        for got in (back.weight_scale, torch_like):
            assert abs(float(got) / float(t.weight_scale) - 1) < 2.5e-7
    return exact


def test_every_projection_of_the_shipped_model():
    w = load_bitnet(PACKAGED)
    exact = [_check(t) for layer in w.layers for t in layer.proj.values()]
    assert sum(exact) >= 0.9 * len(exact), f"{sum(exact)}/{len(exact)} exact"


@pytest.mark.parametrize("shape, seed", [((4, 8), 0), ((64, 160), 1), ((384, 1024), 2),
                                         ((1, 3), 3)])
def test_random_ternary_tensors(shape, seed):
    rng = np.random.default_rng(seed)
    latent = rng.normal(0, 0.02, shape).astype(np.float32)
    t = absmean_ternarize(latent)
    _check(t)
    t2 = TernaryLinear(codes=np.sign(rng.normal(size=shape)).astype(np.int8) * (rng.random(shape) < 0.1),
                       weight_scale=np.float32(rng.uniform(10, 200)))
    if t2.codes.any():
        _check(t2)


def test_latent_save_loads_back_and_gives_the_same_loss(tmp_path):
    cfg = BitNetConfig(vocab_size=259, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=64, bos_token_id=256, eos_token_id=257)
    w = random_bitnet(cfg, seed=5)
    save_bitnet(w, tmp_path / "m", tokenizer_json=byte_level_tokenizer().to_str(), latent=True)
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    assert conf["quantization_config"] == {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                           "quantization_mode": "online"}
    back = load_bitnet(tmp_path / "m")
    for a, b in zip(w.layers, back.layers):
        for p in PROJECTIONS:
            np.testing.assert_array_equal(a.proj[p].codes, b.proj[p].codes)
            assert abs(float(b.proj[p].weight_scale) / float(a.proj[p].weight_scale) - 1) < 2.5e-7
    ids = np.random.default_rng(0).integers(0, 259, (2, 32)).astype(np.int32)
    tgt = np.roll(ids, -1, axis=1)
    tgt[:, -1] = -1
    losses = [BitNetModel(x, CpuBackend(), LoRAConfig()).loss(ids, tgt)[0] for x in (w, back)]
    assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0])


def test_peft_wraps_the_latent_layout(tmp_path):
    """With torch + transformers + peft installed (not in CI: see tools/check_peft_load.py),
    transformers loads the latent save as AutoBitLinear, PEFT wraps it, and the logits match
    bitswarm's."""
    pytest.importorskip("torch", reason="torch/transformers/peft are not installed (CPU CI has "
                        "no torch wheel that installs quickly); tools/check_peft_load.py checks this")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    import subprocess
    import sys
    tool = Path(__file__).resolve().parents[2] / "tools" / "check_peft_load.py"
    r = subprocess.run([sys.executable, str(tool), "--latent"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
