"""The command line as a new user meets it (issue 13): settings layers, help, fail-fast errors
with their messages and exit codes, logs and progress without a terminal. Real `node` processes."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bitswarm.node.settings import resolve

NODE = [sys.executable, "-m", "bitswarm.node"]
TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-bitnet"
TEXT = Path(__file__).resolve().parents[1] / "data" / "golden_text"


def run(*args, env=None, timeout=120):
    e = {k: v for k, v in os.environ.items() if not k.startswith("BITSWARM_")}
    e.update(env or {})
    return subprocess.run([*NODE, *args], capture_output=True, text=True, timeout=timeout, env=e)


def _solo(tmp_path, *extra, env=None, timeout=180):
    return run("start", "--swarm", "solo", "--data", str(TEXT), "--data-dir", str(tmp_path / "n"),
               "--model", str(TINY), "--min-peers", "0", "--local-steps", "2", "--ctx", "32",
               "--batch-size", "2", "--device", "cpu", *extra, env=env, timeout=timeout)


def test_layers_flag_beats_env_beats_file_beats_default(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('swarm = "from-file"\ndata = "/d"\ndata_dir = "/dd"\nlocal_steps = 7\n'
                   'lr = 0.01\nrank = 4\n')
    r = resolve({"rank": "2"}, {"BITSWARM_LR": "0.02", "BITSWARM_RANK": "3"}, cfg)
    assert r.values["rank"] == 2 and r.sources["rank"] == "flag --rank"
    assert r.values["lr"] == 0.02 and r.sources["lr"] == "env BITSWARM_LR"
    assert r.values["local_steps"] == 7 and r.sources["local_steps"] == f"config {cfg}"
    assert r.values["batch_size"] == 8 and r.sources["batch_size"] == "default"
    with pytest.raises(ValueError, match=r"--local-steps \(env BITSWARM_LOCAL_STEPS\): 'x' is "
                                         r"not an integer; expected an integer >= 1"):
        resolve({}, {"BITSWARM_LOCAL_STEPS": "x"}, cfg)
    bad = tmp_path / "bad.toml"
    bad.write_text("local_stepz = 3\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['local_stepz'\]"):
        resolve({}, {}, bad)
    with pytest.raises(ValueError, match="--swarm is required"):
        resolve({}, {})


def test_config_written_on_first_start_is_used_by_the_next_and_shown(tmp_path):
    r = _solo(tmp_path, "--rounds", "1", "--rank", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    d = tmp_path / "n"
    assert 'rank = 4' in (d / "config.toml").read_text()
    assert (d / "node.log").read_text().count("round 0 done") == 1
    # `node start --data-dir D` alone runs with the file's settings; env and flags override it
    r = run("start", "--data-dir", str(d), "--rounds", "1", env={"BITSWARM_LOCAL_STEPS": "1"},
            timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"settings from {d / 'config.toml'}" in r.stderr
    assert json.loads((d / "adapter" / "adapter_config.json").read_text())["r"] == 4
    show = run("config", "show", "--data-dir", str(d), "--json", "--lr", "0.005",
               env={"BITSWARM_BATCH_SIZE": "3"})
    assert show.returncode == 0, show.stderr
    got = json.loads(show.stdout)
    assert got["rank"] == {"value": 4, "source": f"config {d / 'config.toml'}"}
    assert got["lr"] == {"value": 0.005, "source": "flag --lr"}
    assert got["batch_size"] == {"value": 3, "source": "env BITSWARM_BATCH_SIZE"}
    assert got["data_dir"] == {"value": str(d), "source": "flag --data-dir"}   # not in the file


def test_help_version_and_bare_node():
    bare = run()
    assert bare.returncode == 2 and "start" in bare.stdout and "examples:" in bare.stdout
    assert "required: cmd" not in bare.stderr
    v = run("--version")
    assert v.returncode == 0 and re.fullmatch(r"bitswarm \d+\.\d+\.\d+\n", v.stdout)
    h = run("start", "--help")
    for flag in ("--local-steps", "--lr", "--batch-size", "--min-peers", "--config"):
        assert flag in h.stdout
    assert "(default: 20; env BITSWARM_LOCAL_STEPS)" in re.sub(r"\s+", " ", h.stdout)
    e = run("eval", "--help")
    assert "--data" in e.stdout and "(default: 128)" in re.sub(r"\s+", " ", e.stdout)


@pytest.mark.parametrize("flags, message", [
    (["--lr", "5"], "--lr: 5.0 is out of range; expected a number with 0 < lr < 1"),
    (["--local-steps", "0"], "--local-steps: 0 is out of range; expected an integer >= 1"),
    (["--outer-momentum", "1"], "--outer-momentum: 1.0 is out of range; expected a number in "
                                "[0, 1)"),
    (["--topk-fraction", "0"], "--topk-fraction: 0.0 is out of range; expected a number with "
                               "0 < fraction <= 1"),
    (["--codec", "gzip"], "--codec (flag --codec): 'gzip' is not one of fp32, fp16, int8, "
                          "ternary, top-k"),
    (["--ctx", "5000"], "--ctx: 5000 is out of range; expected 2 to the model's "
                        "max_position_embeddings (256)"),
    (["--activation-memory", "-1"], "--activation-memory: -1 is out of range; expected an "
                                    "integer of MiB >= 0"),
    (["--activation-memory", "1.5"], "--activation-memory (flag --activation-memory): '1.5' is "
                                     "not an integer; expected an integer of MiB >= 0"),
    (["--recompute", "on", "--activation-memory", "512"], "--activation-memory is the budget of "
                                                          "--recompute auto; with --recompute on "
                                                          "every layer is recomputed"),
    (["--gpu-ste", "bf16"], "--gpu-ste"),
    (["--cpu-ste", "i8"], "--cpu-ste"),
])
def test_ranges_name_the_value_and_the_range_before_side_effects(tmp_path, flags, message):
    r = _solo(tmp_path, "--rounds", "1", *flags)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "n").exists()          # nothing created: no identity, no copy


def test_bad_data_and_data_dir_fail_in_one_line_before_side_effects(tmp_path):
    r = run("start", "--swarm", "s", "--data", str(tmp_path / "nope"), "--data-dir",
            str(tmp_path / "n"), "--rounds", "1")
    assert r.returncode == 2 and f"--data {tmp_path / 'nope'}: not a directory" in r.stderr
    assert not (tmp_path / "n").exists()              # data checked before identity / model copy
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (["start", "--swarm", "s", "--data", str(TEXT), "--data-dir", str(blocker / "d"),
                  "--rounds", "1"], ["id", "--data-dir", str(blocker / "d")]):
        r = run(*argv)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1] == (f"node {argv[0]}: error: --data-dir "
                                                     f"{blocker / 'd'}: cannot create it (Not a directory)")
        assert "Traceback" not in r.stderr


def test_nan_adapter_is_rejected_by_eval_and_export(tmp_path):
    r = _solo(tmp_path, "--rounds", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    ad = tmp_path / "n" / "adapter"
    weights = ad / "adapter_model.safetensors"
    t = load_file(str(weights))
    k = sorted(t)[0]
    t[k] = np.full_like(t[k], np.nan)
    save_file(t, str(weights))
    for argv in (["eval", "--adapter", str(ad), "--data", str(TEXT), "--json"],
                 ["export", "--adapter", str(ad), "--format", "peft", "--out", str(tmp_path / "x")]):
        r = run(*argv)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "holds NaN or Inf" in r.stderr and k in r.stderr
        assert "NaN" not in r.stdout
    assert not (tmp_path / "x").exists()


def test_eval_ctx_is_bounded_by_the_model(tmp_path):
    r = run("eval", "--model", str(TINY), "--data", str(TEXT), "--ctx", "100000")
    assert r.returncode == 2
    assert "--ctx: 100000 is out of range; expected 2 to the model's max_position_embeddings (256)" in r.stderr


def test_json_logs_and_no_vulkan_loader_noise(tmp_path):
    # --device auto probes wgpu for a GPU: without a session the Vulkan loader used to complain
    r = _solo(tmp_path, "--rounds", "1", "--log-format", "json", "--device", "auto",
              env={"XDG_RUNTIME_DIR": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "XDG_RUNTIME_DIR" not in r.stderr
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert any("round 0 done" in x["msg"] for x in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    # --log-level after the command name
    q = _solo(tmp_path / "q", "--rounds", "1", "--log-level", "WARNING")
    assert q.returncode == 0 and "round 0 done" not in q.stderr


def test_progress_lines_without_a_terminal_at_least_every_30_s(tmp_path):
    """The default model on 2 CPU cores: ~1 s per 8 x 128 step, so 30 steps train for ~20-40 s;
    progress lines must come while it trains, never 30 s apart."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, f in enumerate(sorted(TEXT.iterdir())):
        (docs / f"{i}.txt").write_text(f.read_text() * 3)
    proc = subprocess.Popen([*NODE, "start", "--swarm", "p", "--data", str(docs), "--data-dir",
                             str(tmp_path / "n"), "--rounds", "1", "--min-peers", "0",
                             "--local-steps", "30", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stamps = []
    t0 = time.monotonic()
    for line in proc.stderr:
        if re.search(r"round 0: step \d+/30|round 0 done", line):   # while it trains
            stamps.append(time.monotonic() - t0)
        assert time.monotonic() - t0 < 400
    assert proc.wait(timeout=60) == 0
    assert len(stamps) >= 3, stamps                  # step 1, at least one more, round done
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 30, stamps


def _listening(proc) -> str:
    """The multiaddr a started node prints first (`listening on ...`), within 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return line.split()[-1]
        assert proc.poll() is None, proc.stderr.read()[-3000:]
    raise AssertionError("no `listening on` line within 60 s")


def _member(tmp_path, name, *extra):
    """A node that runs until killed (no --rounds), training alone between rounds."""
    return subprocess.Popen(
        [*NODE, "start", "--swarm", "team", "--data", str(TEXT), "--data-dir", str(tmp_path / name),
         "--model", str(TINY), "--min-peers", "0", "--local-steps", "1", "--ctx", "32",
         "--batch-size", "2", "--device", "cpu", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("case", ["dead-peer", "wrong-swarm", "wrong-lora"])
def test_network_failures_exit_3_saying_why(tmp_path, case):
    # the member waits at its round 0 for a peer update (it refuses ours), republishing it
    member = None if case == "dead-peer" else _member(tmp_path, "a", "--min-peers", "1")
    try:
        if member is None:   # a real multiaddr of a node that is not running
            pid = run("id", "--data-dir", str(tmp_path / "ghost")).stdout.strip()
            peer = f"/ip4/127.0.0.1/tcp/9/p2p/{pid}"
        else:
            peer = _listening(member)
        swarm = "tema" if case == "wrong-swarm" else "team"
        rank = ["--rank", "4"] if case == "wrong-lora" else []
        r = run("start", "--swarm", swarm, "--data", str(TEXT), "--data-dir", str(tmp_path / "b"),
                "--model", str(TINY), "--peer", peer, "--rounds", "2",
                "--round-timeout", "16" if case == "dead-peer" else "6",
                "--local-steps", "1", "--ctx", "32", "--batch-size", "2", "--device", "cpu", *rank,
                timeout=240)
    finally:
        if member is not None:
            member.kill()
            member.wait()
    assert r.returncode == 3, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("node start: network goal failed: ")
    want = {"dead-peer": f"no peer ever connected (dialed {peer})",
            "wrong-swarm": "none joined swarm 'tema': swarm name mismatch suspected",
            "wrong-lora": "was rejected"}[case]
    assert want in last, last
    if case == "wrong-lora":  # a peer it refuses cannot reach its adapter: not waited for
        assert "to reach the final adapter" not in r.stderr
    if case == "dead-peer":   # 2 x 16 s alone: the bounded-wait warning came while it kept dialing
        assert f"no peer connected after 30 s: dialing {peer} (failures above); still trying" in r.stderr
        assert "dial attempt 1 to" in r.stderr
    assert (tmp_path / "b" / "adapter").is_dir()        # the rounds it ran are still saved


def test_peer_lines_and_ctrl_c_says_so_at_once(tmp_path):
    a = _member(tmp_path, "a")
    b = None
    try:
        b = _member(tmp_path, "b", "--peer", _listening(a))
        deadline = time.monotonic() + 60
        seen = ""
        while "peer connected: " not in seen or "joined the swarm" not in seen:
            seen += b.stderr.readline()
            assert time.monotonic() < deadline, seen[-3000:]
        b.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        while "Ctrl-C: stopping" not in seen:
            seen += b.stderr.readline()
        assert time.monotonic() - t0 < 5
        out, err = b.communicate(timeout=60)
        assert b.returncode == 0, err[-3000:]
        assert "stopped by Ctrl-C" in err
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
