"""`node export`: PEFT copy and llama.cpp GGUF LoRA adapter, read back independently.

GGUF expectations are written out by hand from llama.cpp (convert_lora_to_gguf.py: keys
general.type "adapter", adapter.type "lora", adapter.lora.alpha float32, tensors
"<base>.weight.lora_a/.lora_b" = PEFT A and B unchanged; src/llama-adapter.cpp: lora_a
ne = [in, r], lora_b ne = [r, out]) and gguf-py's bitnet tensor names, then checked with
gguf.GGUFReader, which parses the file without our writer's help.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitswarm.kernels.config import PROJECTIONS, LoRAConfig
from bitswarm.formats.peft_adapter import load_adapter, save_adapter
from bitswarm.node.export import export_adapter, export_gguf, export_peft
from bitswarm.node.models import adapter_base_model

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"

SHAPES = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
          "gate_proj": (160, 64), "up_proj": (160, 64), "down_proj": (64, 160)}
LLAMA_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
               "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


@pytest.fixture
def adapter(tmp_path):
    cfg = LoRAConfig(rank=4, alpha=8.0, target_modules=PROJECTIONS)
    rng = np.random.default_rng(0)
    lora = {}
    for i in range(2):
        for p in PROJECTIONS:
            lora[f"layers.{i}.{p}.lora_A"] = rng.normal(size=(4, SHAPES[p][1])).astype(np.float32)
            lora[f"layers.{i}.{p}.lora_B"] = rng.normal(size=(SHAPES[p][0], 4)).astype(np.float32)
    d = tmp_path / "adapter"
    base = tmp_path / "models" / "tiny-bitnet"
    shutil.copytree(TINY, base)
    save_adapter(d, lora, cfg, base_model=str(base), metadata={"round": "3"})
    return d, lora, cfg


def _field(reader, key):
    f = reader.fields[key]
    return f.contents()


def test_gguf_metadata_and_tensors(adapter, tmp_path):
    import gguf
    d, lora, cfg = adapter
    out = export_gguf(d, tmp_path / "a.gguf")
    r = gguf.GGUFReader(out)
    assert _field(r, "general.architecture") == "bitnet"
    assert _field(r, "general.type") == "adapter"
    assert _field(r, "adapter.type") == "lora"
    assert r.fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]
    assert _field(r, "adapter.lora.alpha") == pytest.approx(8.0)
    assert _field(r, "general.name") == "tiny-bitnet"
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == len(lora)
    for key in (k for k in lora if k.endswith("lora_A")):
        _, i, proj, _ = key.split(".")
        A, B = lora[key], lora[key.replace("lora_A", "lora_B")]
        base = f"blk.{i}.{LLAMA_NAMES[proj]}.weight"
        ta, tb = tensors[f"{base}.lora_a"], tensors[f"{base}.lora_b"]
        out_f, in_f = SHAPES[proj]
        # GGUF ne order: lora_a [in, r], lora_b [r, out] (llama-adapter.cpp shape checks)
        assert list(ta.shape) == [in_f, cfg.rank] and list(tb.shape) == [cfg.rank, out_f]
        assert ta.tensor_type == tb.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(ta.data).reshape(A.shape), A)
        np.testing.assert_array_equal(np.asarray(tb.data).reshape(B.shape), B)


def test_gguf_names_match_gguf_py_tensor_map():
    import gguf
    from bitswarm.formats.gguf_lora import gguf_base_name
    bitnet_tensors = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.BITNET]}
    for p, llama in LLAMA_NAMES.items():
        assert gguf_base_name(2, p, 3) == f"blk.2.{llama}.weight"
        assert f"blk.{{bid}}.{llama}" in bitnet_tensors


def test_peft_export_loads_back_identically(adapter, tmp_path):
    d, lora, cfg = adapter
    out = tmp_path / "copy"
    out.mkdir()
    (out / "stale.txt").write_text("replaced atomically")
    export_peft(d, out)
    got, got_cfg, meta = load_adapter(out)
    want, want_cfg, want_meta = load_adapter(d)
    assert got_cfg == want_cfg == cfg and meta == want_meta == {"round": "3"}
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # The base stays named relative to the adapter: from the copy it still resolves.
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == "../models/tiny-bitnet" and adapter_base_model(out) == out / base
    assert (out / base).resolve() == (tmp_path / "models" / "tiny-bitnet").resolve()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy.")]


def test_bad_adapter_dir_and_format_errors(adapter, tmp_path):
    d, _, _ = adapter
    missing = tmp_path / "nope"
    for fmt in ("peft", "gguf"):
        with pytest.raises(ValueError, match=str(missing)):
            export_adapter(missing, fmt, tmp_path / "o")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json"):
        export_adapter(broken, "gguf", tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()
    with pytest.raises(ValueError, match="--format"):
        export_adapter(d, "onnx", tmp_path / "o")
    with pytest.raises(ValueError, match="--out"):
        export_adapter(d, "peft", d)


def test_cli_export(adapter, tmp_path):
    d, _, _ = adapter
    out = tmp_path / "cli.gguf"
    r = subprocess.run([sys.executable, "-m", "bitswarm.node", "export", "--adapter", str(d),
                        "--format", "gguf", "--out", str(out)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.is_file() and str(out) in r.stdout
    r = subprocess.run([sys.executable, "-m", "bitswarm.node", "export", "--adapter",
                        str(tmp_path / "missing"), "--format", "peft", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and str(tmp_path / "missing") in r.stderr
