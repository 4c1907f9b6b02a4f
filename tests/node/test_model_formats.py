"""Base models as GGUF files through the real `node` commands (export, eval, generate, start),
and adapters that name their base by hash and relative path."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitswarm.formats.peft_adapter import save_adapter
from bitswarm.kernels.config import LoRAConfig
from bitswarm.node.export import export_peft
from bitswarm.node.models import adapter_base_model, model_sha256

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
GOLDEN_TEXT = Path(__file__).resolve().parents[1] / "data" / "golden_text"
NODE = [sys.executable, "-m", "bitswarm.node"]


def run(*args, timeout=180):
    return subprocess.run([*NODE, *args], capture_output=True, text=True, timeout=timeout)


def eval_json(*args) -> dict:
    r = run("eval", "--data", str(GOLDEN_TEXT), "--ctx", "64", "--device", "cpu", "--json", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    out = {}
    for t in ("f32", "tq2_0"):
        r = run("export", "--model", str(TINY), "--format", "gguf", "--type", t,
                "--out", str(d / f"tiny-{t}.gguf"))
        assert r.returncode == 0, r.stderr[-2000:]
        out[t] = d / f"tiny-{t}.gguf"
    return out


def test_eval_and_generate_on_gguf_match_the_checkpoint(ggufs, tmp_path):
    ref = eval_json("--model", str(TINY))
    for t, tol in (("f32", 1e-5), ("tq2_0", 1e-3)):
        got = eval_json("--model", str(ggufs[t]))
        assert got["tokens"] == ref["tokens"] and got["bytes"] == ref["bytes"]
        assert abs(got["loss"] - ref["loss"]) <= tol, (t, got["loss"], ref["loss"])
    gen = ["generate", "--prompt", "The json module", "--max-new-tokens", "12", "--device", "cpu"]
    a, b = run(*gen, "--model", str(TINY)), run(*gen, "--model", str(ggufs["f32"]))
    assert a.returncode == b.returncode == 0, b.stderr[-2000:]
    assert a.stdout == b.stdout and len(a.stdout.strip()) > 0
    # GGUF in, GGUF out: re-exporting the f32 file at another type works from the file alone.
    again = tmp_path / "again.gguf"
    r = run("export", "--model", str(ggufs["f32"]), "--format", "gguf", "--type", "f16",
            "--out", str(again))
    assert r.returncode == 0, r.stderr[-2000:]
    assert abs(eval_json("--model", str(again))["loss"] - ref["loss"]) <= 1e-3


def test_start_on_gguf_then_the_adapter_finds_its_base(ggufs, tmp_path):
    """`node start --model FILE.gguf` trains; its adapter names the base relative to itself,
    with the file's hash; eval finds it from the adapter alone, and once the adapter is moved
    away from its base the error says to pass --model."""
    docs = tmp_path / "docs"
    shutil.copytree(GOLDEN_TEXT, docs)
    data_dir = tmp_path / "node"
    r = run("start", "--swarm", "solo", "--data", str(docs), "--data-dir", str(data_dir),
            "--model", str(ggufs["f32"]), "--rounds", "1", "--min-peers", "0",
            "--local-steps", "1", "--ctx", "32", "--batch-size", "2", "--device", "cpu",
            timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    adapter = data_dir / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not Path(base).is_absolute() and (adapter / base).resolve() == ggufs["f32"].resolve()
    from bitswarm.formats.peft_adapter import read_adapter_metadata
    sha = hashlib.sha256(ggufs["f32"].read_bytes()).hexdigest()
    assert read_adapter_metadata(adapter)["base_model_sha256"] == sha == model_sha256(ggufs["f32"])
    assert eval_json("--adapter", str(adapter))["tokens"] > 0

    moved = tmp_path / "elsewhere" / "deeper" / "adapter"
    shutil.copytree(adapter, moved)
    r = run("eval", "--adapter", str(moved), "--data", str(docs), "--device", "cpu")
    assert r.returncode == 2
    assert "not found" in r.stderr and "pass --model" in r.stderr and sha[:12] in r.stderr
    assert eval_json("--adapter", str(moved), "--model", str(ggufs["f32"]))["tokens"] > 0
    # `node export --format peft` re-expresses the base relative to the new folder.
    exported = tmp_path / "x" / "y" / "exported"
    exported.parent.mkdir(parents=True)
    export_peft(adapter, exported)
    assert adapter_base_model(exported).resolve() == ggufs["f32"].resolve()


def test_base_hash_mismatch_says_pass_model(tmp_path):
    base = tmp_path / "models" / "tiny"
    shutil.copytree(TINY, base)
    lora = {"layers.0.q_proj.lora_A": np.zeros((2, 64), np.float32),
            "layers.0.q_proj.lora_B": np.zeros((64, 2), np.float32)}
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    cfg = LoRAConfig(rank=2, target_modules=("q_proj",))
    save_adapter(ok, lora, cfg, base_model=str(base),
                 metadata={"base_model_sha256": model_sha256(base)})
    save_adapter(bad, lora, cfg, base_model=str(base), metadata={"base_model_sha256": "0" * 64})
    assert json.loads((ok / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == "../models/tiny"
    assert adapter_base_model(ok) == ok / "../models/tiny"
    with pytest.raises(ValueError, match=r"not the one the adapter was trained on .*pass --model"):
        adapter_base_model(bad)


@pytest.mark.parametrize("flags, names", [
    (["--model", str(TINY), "--format", "gguf", "--type", "q4_0"], "--type"),
    (["--adapter", "a", "--model", str(TINY), "--format", "gguf"], "exactly one of --adapter"),
    (["--model", "/nonexistent/model", "--format", "gguf"], "/nonexistent/model"),
    (["--model", str(TINY), "--format", "peft"], "--format peft"),
])
def test_export_model_fails_fast(tmp_path, flags, names):
    r = run("export", *flags, "--out", str(tmp_path / "m.gguf"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert names in r.stderr.strip().splitlines()[-1]     # argparse prints its usage above
    assert not (tmp_path / "m.gguf").exists()
    r = run("export", "--model", str(TINY), "--format", "gguf",
            "--out", str(tmp_path / "missing" / "m.gguf"))
    assert r.returncode == 2 and str(tmp_path / "missing") in r.stderr


def test_type_with_adapter_is_refused(tmp_path):
    r = run("export", "--adapter", str(tmp_path), "--format", "gguf", "--type", "f16",
            "--out", str(tmp_path / "a.gguf"))
    assert r.returncode == 2 and "--type applies to --model exports only" in r.stderr


def test_export_model_as_autobitlinear_folder(tmp_path):
    """`--format hf`: the packed (BitLinear) checkpoint re-saved in the online autobitlinear
    layout loads back to the same codes (scales to the ulp); transformers + PEFT on it:
    tools/check_peft_load.py --latent."""
    from bitswarm.formats.hf_checkpoint import load_bitnet
    packed = TINY.with_name("tiny-bitnet-packed")
    out = tmp_path / "hf"
    r = run("export", "--model", str(packed), "--format", "hf", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    conf = json.loads((out / "config.json").read_text())
    assert conf["quantization_config"]["linear_class"] == "autobitlinear"
    assert conf["quantization_config"]["quantization_mode"] == "online"
    a, b = load_bitnet(packed), load_bitnet(out)
    for la, lb in zip(a.layers, b.layers):
        for p, t in la.proj.items():
            np.testing.assert_array_equal(t.codes, lb.proj[p].codes)
            assert abs(float(lb.proj[p].weight_scale) / float(t.weight_scale) - 1) < 2.5e-7
    r = run("export", "--model", str(packed), "--format", "hf", "--type", "f16",
            "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--type applies to --format gguf only" in r.stderr
    assert not (tmp_path / "x").exists()
