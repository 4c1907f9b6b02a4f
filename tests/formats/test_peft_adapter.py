"""LoRA adapters in PEFT's layout: roundtrip, exact key names, atomic replace, bad files."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import bitswarm.formats.peft_adapter as ckpt
from bitswarm.formats.hf_checkpoint import read_safetensors
from bitswarm.kernels.config import PROJECTIONS, LoRAConfig
from bitswarm.formats.peft_adapter import load_adapter, save_adapter

SHAPES = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
          "gate_proj": (160, 64), "up_proj": (160, 64), "down_proj": (64, 160)}


def _lora(cfg: LoRAConfig, layers: int = 2, seed: int = 0) -> dict:
    """A LoRAState in (layer, PROJECTIONS, A before B) order, as load_adapter returns it."""
    rng = np.random.default_rng(seed)
    state = {}
    for i in range(layers):
        for p in (p for p in PROJECTIONS if p in cfg.target_modules):
            state[f"layers.{i}.{p}.lora_A"] = rng.normal(size=(cfg.rank, SHAPES[p][1])).astype(np.float32)
            state[f"layers.{i}.{p}.lora_B"] = rng.normal(size=(SHAPES[p][0], cfg.rank)).astype(np.float32)
    return state


def _assert_lora_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert b[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}."))


def test_roundtrip(tmp_path):
    cfg = LoRAConfig(rank=4, alpha=8.0, target_modules=PROJECTIONS, init_std=0.01,
                     freeze_A=True)
    lora = _lora(cfg)
    meta = {"round": "12", "base_model_sha256": "ab" * 32}
    save_adapter(tmp_path / "a", lora, cfg, base_model="tiny-bitnet", metadata=meta)
    got, got_cfg, got_meta = load_adapter(tmp_path / "a")
    _assert_lora_equal(lora, got)
    assert got_cfg == cfg and got_meta == meta


def test_peft_names_and_config_exact(tmp_path):
    cfg = LoRAConfig(rank=8, alpha=16.0, target_modules=("v_proj", "q_proj", "down_proj"))
    save_adapter(tmp_path / "a", _lora(cfg, layers=1), cfg, base_model="m", metadata={})
    tensors, meta = read_safetensors(tmp_path / "a" / "adapter_model.safetensors")
    assert sorted(tensors) == [
        "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
    ]
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (8, 160)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (64, 8)
    assert meta["format"] == "pt"
    conf = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert {k: conf[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "target_modules",
                                 "lora_dropout", "bias", "fan_in_fan_out",
                                 "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16.0,
        "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "m"}


def test_replace_is_atomic_and_cleans_up(tmp_path):
    cfg = LoRAConfig(rank=2)
    d = tmp_path / "adapter"
    v1, v2, v3 = (_lora(cfg, seed=s) for s in (1, 2, 3))
    save_adapter(d, v1, cfg, base_model="m", metadata={"round": "1"})
    save_adapter(d, v2, cfg, base_model="m", metadata={"round": "2"})
    assert load_adapter(d)[2] == {"round": "2"} and _siblings(d) == []

    # Crash after step 2 (old moved aside) with a half-written tmp: D is missing.
    os.rename(d, tmp_path / ".adapter.old-dead")
    (tmp_path / ".adapter.tmp-beef").mkdir()
    (tmp_path / ".adapter.tmp-beef" / "adapter_model.safetensors").write_bytes(b"\x00" * 5)
    got, _, meta = load_adapter(d)                 # reads the complete previous adapter
    assert meta == {"round": "2"}
    _assert_lora_equal(v2, got)
    save_adapter(d, v3, cfg, base_model="m", metadata={"round": "3"})
    assert load_adapter(d)[2] == {"round": "3"} and _siblings(d) == []

    # Crash after step 3 (old not yet removed): D is already the new one.
    shutil.copytree(d, tmp_path / ".adapter.old-cafe")
    assert load_adapter(d)[2] == {"round": "3"}
    save_adapter(d, v1, cfg, base_model="m", metadata={"round": "4"})
    assert _siblings(d) == []


def test_failed_write_leaves_old_adapter(tmp_path, monkeypatch):
    cfg = LoRAConfig(rank=2)
    d = tmp_path / "adapter"
    save_adapter(d, _lora(cfg, seed=1), cfg, base_model="m", metadata={"round": "1"})
    real_write = ckpt.write_file_durable

    def fail_on_config(path: Path, data: bytes) -> None:   # injected disk error mid-save
        if path.name == "adapter_config.json":
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "write_file_durable", fail_on_config)
    with pytest.raises(OSError):
        save_adapter(d, _lora(cfg, seed=2), cfg, base_model="m", metadata={"round": "2"})
    assert load_adapter(d)[2] == {"round": "1"} and _siblings(d) == []


def test_corrupt_files_name_the_file(tmp_path):
    cfg = LoRAConfig(rank=2)
    d = tmp_path / "a"
    save_adapter(d, _lora(cfg), cfg, base_model="m", metadata={})
    weights = d / "adapter_model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors"):
        load_adapter(d)

    weights.write_bytes(good)
    tensors, meta = read_safetensors(weights)
    del tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"]
    save_file(tensors, str(weights), metadata=meta)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*'base_model\.model\.model"
                       r"\.layers\.1\.self_attn\.k_proj\.lora_B\.weight' missing"):
        load_adapter(d)

    weights.write_bytes(good)
    (d / "adapter_config.json").write_text("{\"peft_type\": \"LORA\", \"r\": ")
    with pytest.raises(ValueError, match=r"cannot parse adapter config .*adapter_config\.json"):
        load_adapter(d)

    save_adapter(d, _lora(cfg), cfg, base_model="m", metadata={})
    conf = json.loads((d / "adapter_config.json").read_text())
    conf["r"] = 3
    (d / "adapter_config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*disagree with r=3"):
        load_adapter(d)
    with pytest.raises(ValueError, match="adapter directory not found"):
        load_adapter(tmp_path / "nope")


def test_save_rejects_bad_input(tmp_path):
    cfg = LoRAConfig(rank=2)
    A, B = np.zeros((2, 64), np.float32), np.zeros((64, 2), np.float32)
    with pytest.raises(ValueError, match="bad LoRA key"):
        save_adapter(tmp_path / "a", {"layer0.q_proj.lora_A": A, "layer0.q_proj.lora_B": B}, cfg,
                     base_model="m", metadata={})
    with pytest.raises(ValueError, match="not in target_modules"):
        save_adapter(tmp_path / "a", {"layers.0.up_proj.lora_A": A, "layers.0.up_proj.lora_B": B},
                     cfg, base_model="m", metadata={})
    with pytest.raises(ValueError, match="r = 2"):
        save_adapter(tmp_path / "a", {"layers.0.q_proj.lora_A": A[:1], "layers.0.q_proj.lora_B": B},
                     cfg, base_model="m", metadata={})
    with pytest.raises(ValueError, match="lora_B missing"):
        save_adapter(tmp_path / "a", {"layers.0.q_proj.lora_A": A}, cfg, base_model="m",
                     metadata={})
    with pytest.raises(ValueError, match="reserved"):
        save_adapter(tmp_path / "a", {"layers.0.q_proj.lora_A": A, "layers.0.q_proj.lora_B": B},
                     cfg, base_model="m", metadata={"format": "x"})
    assert not (tmp_path / "a").exists()
