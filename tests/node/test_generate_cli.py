"""`node generate` as a user runs it: a real process on tests/data/tiny-bitnet (CPU backend)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from bitswarm.formats.hf_checkpoint import read_config
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import init_lora
from bitswarm.formats.peft_adapter import save_adapter

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
NODE = [sys.executable, "-m", "bitswarm.node"]


def run(*args):
    return subprocess.run([*NODE, "generate", *args], capture_output=True, text=True, timeout=60)


def test_greedy_generate_prints_text_deterministically():
    args = ["--model", str(TINY), "--prompt", "Hello", "--max-new-tokens", "12",
            "--temperature", "0", "--device", "cpu"]
    a, b = run(*args), run(*args)
    assert a.returncode == 0, a.stderr[-2000:]
    assert a.stdout == b.stdout and a.stdout.endswith("\n") and len(a.stdout) > 1


def test_adapter_names_the_base_model_and_seeded_sampling_repeats(tmp_path):
    lcfg = LoRAConfig(rank=2, alpha=4.0)
    state = init_lora(read_config(TINY), lcfg, seed=0)
    rng = np.random.default_rng(0)
    for k in state:
        if k.endswith("lora_B"):
            state[k] = (rng.standard_normal(state[k].shape) * 0.1).astype(np.float32)
    save_adapter(tmp_path / "ad", state, lcfg, base_model=str(TINY), metadata={})
    args = ["--adapter", str(tmp_path / "ad"), "--prompt", "abc", "--max-new-tokens", "10",
            "--temperature", "0.8", "--seed", "5", "--device", "cpu"]
    a, b = run(*args), run(*args)
    assert a.returncode == 0, a.stderr[-2000:]
    assert a.stdout == b.stdout and len(a.stdout) > 1


def test_bad_flags_exit_2_naming_them(tmp_path):
    r = run("--model", str(TINY), "--prompt", "x", "--max-new-tokens", "0")
    assert r.returncode == 2 and "--max-new-tokens" in r.stderr
    r = run("--model", str(tmp_path / "missing"), "--prompt", "x")
    assert r.returncode == 2 and str(tmp_path / "missing") in r.stderr
    r = run("--adapter", str(tmp_path / "no-adapter"), "--prompt", "x")
    assert r.returncode == 2 and str(tmp_path / "no-adapter") in r.stderr


def test_without_model_or_adapter_uses_the_built_in_model():
    r = run("--prompt", "def main():", "--max-new-tokens", "8", "--temperature", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()
