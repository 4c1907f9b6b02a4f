"""A node's own life (issue 9, node side): resume after Ctrl-C or kill -9, one process per data
dir, `node status` during a run. Real `node start` processes on 127.0.0.1."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.numpy import load_file

from bitswarm.formats.peft_adapter import load_adapter

NODE = [sys.executable, "-m", "bitswarm.node"]
TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
TEXT = Path(__file__).resolve().parents[1] / "data" / "golden_text"


def _args(data_dir, *extra):
    return [*NODE, "start", "--swarm", "solo", "--data", str(TEXT), "--data-dir", str(data_dir),
            "--model", str(TINY), "--min-peers", "0", "--local-steps", "3", "--ctx", "32",
            "--batch-size", "2", "--device", "cpu", *extra]


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith("BITSWARM_")}


def run(args, timeout=180):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env())


def _tensors(d: Path) -> dict:
    return load_file(str(d / "adapter" / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _rounds(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]


def test_resume_continues_and_equals_an_uninterrupted_run(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run(_args(whole, "--rounds", "4")).returncode == 0
    r = run(_args(split, "--rounds", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(_args(split, "--rounds", "4"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after round 1" in r.stderr
    # adapter, error-feedback residual, AdamW moments and sampler RNG all restored: same bits
    assert _same(_tensors(whole), _tensors(split))
    lines = _rounds(split)
    assert [x.get("round") for x in lines if "round" in x] == [-1, 0, 1, 2, 3]
    assert [x["first_round"] for x in lines if "session" in x] == [0, 2]
    assert load_adapter(split / "adapter")[2]["round"] == "3"
    # the swarm's rounds are done: a rerun does nothing and says so
    r = run(_args(split, "--rounds", "4"))
    assert r.returncode == 0 and "already complete" in r.stderr


def test_sigkill_at_random_points_always_resumes(tmp_path):
    """kill -9 at random moments (mid-training, mid-aggregation, mid-checkpoint write), restart
    with the same command until the node finishes: every restart resumes from the last
    completed round, no file is ever unreadable, and unless a kill fell between the adapter and
    the local-state write (logged), the result equals an uninterrupted run's bits."""
    d, whole = tmp_path / "n", tmp_path / "whole"
    assert run(_args(whole, "--rounds", "6")).returncode == 0
    rng = random.Random(1)
    # kill right after one of these lines of a chosen round: mid-training, mid-aggregation,
    # mid-checkpoint write, between rounds
    points = [": training:", "publishing update", "saving:", " done:"]
    kills, fresh_state, last_round, killed_at = 0, False, -1, []
    for attempt in range(12):
        proc = subprocess.Popen(_args(d, "--rounds", "6"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=_env())
        err = ""
        target = (f"round {rng.randrange(last_round + 1, 6)}", points[attempt % 4]) \
            if attempt < 6 and last_round < 5 else None
        for line in proc.stderr:
            err += line
            if target and target[0] in line and target[1] in line:
                time.sleep(rng.random() * 0.02)
                proc.send_signal(signal.SIGKILL)
                kills += 1
                killed_at.append(target)
                break
        err += proc.stderr.read()
        proc.wait(timeout=180)
        fresh_state |= "start fresh" in err
        if (d / "adapter").exists():
            rnd = int(load_adapter(d / "adapter")[2]["round"])      # never corrupt
            assert rnd >= last_round                               # never reset to the seed
            last_round = rnd
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert proc.returncode == 0 and kills >= 3, (killed_at, err[-3000:])
    print(f"kills at {killed_at}; local state restarted fresh: {fresh_state}")
    assert last_round == 5
    lines = _rounds(d)                                            # every line is JSON
    done = [x["round"] for x in lines if x.get("round", -1) >= 0]
    assert sorted(set(done)) == list(range(6))
    if not fresh_state:
        assert _same(_tensors(whole), _tensors(d))


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_node_per_data_dir_and_status_while_running(tmp_path):
    d = tmp_path / "n"
    port = _free_port()
    a = subprocess.Popen(_args(d, "--metrics", f"127.0.0.1:{port}"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=_env())
    try:
        deadline = time.monotonic() + 60
        while not (d / "status.json").exists() or not (d / "rounds.jsonl").exists():
            assert a.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        b = run(_args(d, "--rounds", "1"))
        assert b.returncode == 2
        assert f"in use by another node (PID {a.pid})" in b.stderr
        while True:   # status keeps up with the run
            st = json.loads(run([*NODE, "status", "--data-dir", str(d), "--json"]).stdout)
            if st["rounds_completed"] >= 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert st["running"] is True and st["pid"] == a.pid and st["swarm"] == "solo"
        assert st["peer_id"].startswith("12D3KooW") and st["peers"] == []
        assert len(st["adapter_sha256"]) == 64 and st["last_train_loss"] > 0
        for k in ("round", "phase", "last_heldout_loss", "adapter_agrees", "bytes_in",
                  "bytes_out", "uptime_s", "swarm_members", "dp_epsilon"):
            assert k in st
        assert st["peer_paths"] == {} and st["reachability"] in ("unknown", "public", "private")
        text = run([*NODE, "status", "--data-dir", str(d)])
        assert text.returncode == 0 and text.stdout.startswith(f"running (pid {a.pid})")
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        done = [l for l in metrics.splitlines() if l.startswith("bitswarm_rounds_completed ")]
        assert done and float(done[0].split()[1]) >= 1
        assert 'bitswarm_info{adapter_sha256="' in metrics and "bitswarm_peers 0.0" in metrics
    finally:
        a.send_signal(signal.SIGINT)
        a.wait(timeout=60)
    st = json.loads(run([*NODE, "status", "--data-dir", str(d), "--json"]).stdout)
    assert st["running"] is False and st["phase"] == "stopped"


def test_a_data_dir_of_another_swarm_is_refused_not_overwritten(tmp_path):
    d = tmp_path / "n"
    assert run(_args(d, "--rounds", "1")).returncode == 0
    before = (d / "adapter" / "adapter_model.safetensors").read_bytes()
    args = _args(d, "--rounds", "1")
    args[args.index("solo")] = "other"
    r = run(args)
    assert r.returncode == 2
    assert "belongs to another swarm ('solo', this node: 'other')" in r.stderr
    assert (d / "adapter" / "adapter_model.safetensors").read_bytes() == before
