"""The command line as a user meets it: real `node` processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bitswarm.simulations.local_swarm import prepare_documents

NODE = [sys.executable, "-m", "bitswarm.node"]


def run(*args, timeout=120):
    return subprocess.run([*NODE, *args], capture_output=True, text=True, timeout=timeout)


def test_node_id_is_stable_and_console_scripts_agree(tmp_path):
    a = run("id", "--data-dir", str(tmp_path / "n"))
    b = run("id", "--data-dir", str(tmp_path / "n"))
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("12D3KooW")
    script = Path(sys.executable).with_name("bitswarm")
    if script.exists():   # installed console script (same entry point as `node`)
        c = subprocess.run([str(script), "id", "--data-dir", str(tmp_path / "n")], capture_output=True, text=True)
        assert c.stdout == a.stdout


@pytest.mark.parametrize("flags, names", [
    (["--data", "/nonexistent/docs"], "/nonexistent/docs"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--lr", "5"], "--lr"),
    (["--peer", "/ip4/127.0.0.1/tcp/1"], "/p2p/"),
    (["--peer", "not-a-multiaddr"], "not-a-multiaddr"),
    (["--targets", "q_proj,nope"], "nope"),
])
def test_start_fails_fast_naming_the_bad_flag_or_file(tmp_path, flags, names):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello world " * 50)
    base = ["start", "--swarm", "s", "--data", str(docs), "--data-dir", str(tmp_path / "n"), "--rounds", "1"]
    r = run(*base, *flags)
    assert r.returncode == 2, r.stderr[-2000:]
    assert names in r.stderr and "error" in r.stderr


def test_ctrl_c_saves_and_exits_0_then_eval_uses_the_adapter(tmp_path):
    docs = prepare_documents(tmp_path, 1, files_per_node=8)[0]
    data_dir = tmp_path / "n"
    proc = subprocess.Popen([*NODE, "start", "--swarm", "solo", "--data", str(docs), "--data-dir", str(data_dir),
                             "--min-peers", "0", "--local-steps", "2", "--ctx", "32", "--batch-size", "2",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (data_dir / "adapter" / "adapter_model.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no adapter saved within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "listening on /ip4/127.0.0.1/tcp/" in out and "/p2p/12D3KooW" in out
    assert "Ctrl-C" in err
    cfg = json.loads((data_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    r = run("eval", "--adapter", str(data_dir / "adapter"), "--data", str(docs), "--ctx", "32", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["tokens"] > 0 and 0 < res["loss"] < 10 and res["bits_per_byte"] > 0


def test_gpu_ste_flag_reaches_the_backward(tmp_path):
    """`node start --device gpu --gpu-runtime wgpu --gpu-ste i16` / `i8` (lavapipe in CI) logs
    the runtime and the STE arithmetic it runs and trains an adapter near the fp32 STE's one (the int paths round dy per row: i16
    to 2^-14 of its max, i8 to 2^-7), but not bit-identical (the flag changes the math)."""
    docs = prepare_documents(tmp_path, 1, files_per_node=6)[0]
    model = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
    got = {}
    for ste in ("f32", "i16", "i8"):
        d = tmp_path / f"n-{ste}"
        r = run("start", "--swarm", "solo", "--data", str(docs), "--data-dir", str(d),
                "--model", str(model), "--rounds", "1", "--min-peers", "0", "--local-steps", "2",
                "--ctx", "32", "--batch-size", "2", "--device", "gpu", "--gpu-ste", ste,
                "--gpu-runtime", "wgpu", timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"STE input gradient {ste}" in r.stderr, r.stderr[-3000:]
        assert "via wgpu-native" in r.stderr, r.stderr[-3000:]   # --gpu-runtime reached it
        got[ste] = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    ref = np.concatenate([v.ravel() for _, v in sorted(got["f32"].items())])
    for ste, bound in (("i16", 1e-3), ("i8", 0.1)):     # measured 5.6e-5, 1.4e-2
        v = np.concatenate([x.ravel() for _, x in sorted(got[ste].items())])
        rel = np.linalg.norm(v - ref) / np.linalg.norm(ref)
        assert 0 < rel < bound, (ste, rel)


def test_cpu_ste_flag_reaches_the_backward(tmp_path):
    """`node start --device cpu --cpu-ste i16` / `i24` logs the STE arithmetic it runs and
    trains an adapter near the f32 one (i16 rounds dy per row to 2^-14 of its max, i24 keeps
    float32's precision), not bit-identical to it (the flag changes the math)."""
    docs = prepare_documents(tmp_path, 1, files_per_node=6)[0]
    model = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
    got = {}
    for ste in ("f32", "i16", "i24"):
        d = tmp_path / f"n-{ste}"
        r = run("start", "--swarm", "solo", "--data", str(docs), "--data-dir", str(d),
                "--model", str(model), "--rounds", "1", "--min-peers", "0", "--local-steps", "2",
                "--ctx", "32", "--batch-size", "2", "--device", "cpu", "--cpu-ste", ste,
                timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"STE input gradient {ste}" in r.stderr, r.stderr[-3000:]
        got[ste] = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    ref = np.concatenate([v.ravel() for _, v in sorted(got["f32"].items())])
    for ste, bound in (("i16", 1e-3), ("i24", 1e-4)):   # i24 measured 1.2e-5 (AdamW amplifies)
        v = np.concatenate([x.ravel() for _, x in sorted(got[ste].items())])
        rel = np.linalg.norm(v - ref) / np.linalg.norm(ref)
        assert 0 < rel < bound, (ste, rel)


def test_gpu_memory_flags_train_the_same_adapter(tmp_path):
    """`node start --device gpu` (lavapipe in CI) with the vocab table in host memory and no
    layer recomputation, and with --activation-memory 0 (the tiny model's last of 2 layers
    saved, the first recomputed), trains the bit-identical adapter as with the table on the GPU
    and recomputation on: the flags trade memory for time, never results. The log says how
    many layers each recomputed, so the flags reach the model."""
    docs = prepare_documents(tmp_path, 1, files_per_node=6)[0]
    model = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
    hashes = {}
    for emb, rec, mem, recomputed in (("gpu", "on", [], 2), ("host", "off", [], 0),
                                      ("gpu", "auto", ["--activation-memory", "0"], 1)):
        d = tmp_path / f"n-{emb}-{rec}"
        r = run("start", "--swarm", "solo", "--data", str(docs), "--data-dir", str(d),
                "--model", str(model), "--rounds", "1", "--min-peers", "0", "--local-steps", "2",
                "--ctx", "32", "--batch-size", "2", "--device", "gpu", "--embeddings", emb,
                "--recompute", rec, *mem, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"training step: {recomputed} of 2 layers recomputed" in r.stderr, r.stderr[-3000:]
        hashes[rec] = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    assert len(hashes["on"]) > 0
    for rec in ("off", "auto"):
        assert hashes[rec].keys() == hashes["on"].keys()
        for k, v in hashes["on"].items():     # tensors, not file bytes (the header has metadata)
            assert np.array_equal(v, hashes[rec][k]), (rec, k)
