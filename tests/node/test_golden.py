"""`node eval` against transformers' BitNet on the committed tiny checkpoint (tests/make_golden.py).

The golden loss was computed once by transformers 5.23 (online AutoBitLinear, float32, eager) with
the README's eval protocol; ours must match within 0.5% on both devices (NumPy, and wgpu —
lavapipe in CI), for the latent (bf16) checkpoint and for our packed re-save of it.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = json.loads((DATA / "golden.json").read_text())


def node_eval(model: Path, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bitswarm.node", "eval", "--model", str(model), "--data",
         str(DATA / "golden_text"), "--ctx", str(GOLDEN["ctx"]), "--device", device, "--json"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["tiny-bitnet", "tiny-bitnet-packed"])
@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_node_eval_matches_transformers(model, device):
    res = node_eval(DATA / model, device)
    assert res["device"] == device
    assert res["tokens"] == GOLDEN["tokens"]
    assert abs(res["loss"] - GOLDEN["loss"]) <= 0.005 * GOLDEN["loss"], (res, GOLDEN["loss"])
    assert res["bits_per_byte"] > 0


def test_first_window_logits_match_transformers():
    from bitswarm.kernels.backend import CpuBackend
    from bitswarm.kernels.checkpoint import load_bitnet
    from bitswarm.kernels.config import LoRAConfig
    from bitswarm.kernels.model import BitNetModel

    model = BitNetModel(load_bitnet(DATA / "tiny-bitnet"), CpuBackend(), LoRAConfig())
    model.set_lora({})
    ids = np.asarray(GOLDEN["first_window_ids"], np.int32)[None, :-1]
    logits = model.be.numpy(model.forward(ids))[:4]
    ref = np.load(DATA / "golden_logits_first4.npy")
    err = np.max(np.abs(logits - ref)) / np.max(np.abs(ref))
    assert err < 1e-4, err
