"""Both engines, end to end through the scenario runner (`bitswarm simulate run`): the report
files, agreement, churn, the centralized baseline; the real engine with real processes on
loopback and, where the machine allows, inside network namespaces behind tc netem."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bitswarm.simulations import netns
from bitswarm.simulations.runner import run_scenario

SUMMARY_KEYS = {"rounds_completed", "nodes", "final_heldout_loss", "centralized_heldout_loss",
                "bytes_sent_total", "fp32_bytes_equivalent", "adapters_identical", "wall_s"}


def scenario(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def rows(out: Path) -> list[dict]:
    with open(out / "rounds.csv") as f:
        return list(csv.DictReader(f))


def test_virtual_engine_survives_leave_crash_and_join_and_agrees(tmp_path):
    """12 nodes on the surrogate: a node leaves, one crashes after publishing, two join late
    (one of them a leaver coming back); every round completes and every node present at the
    end holds the same adapter, the joiners included (they caught up by state sync)."""
    out = tmp_path / "out"
    summary = run_scenario(scenario(tmp_path, """
name = "churny"
nodes = 12
rounds = 5
initial_nodes = 10
surrogate = true
centralized_baseline = true
local_steps = 5
codec = "top-k"
outer_lr = 0.7
outer_momentum = 0.9
round_timeout_s = 20
[[churn]]
round = 1
leave = [0]
crash = [1]
[[churn]]
round = 2
join = [10, 11]
[[churn]]
round = 3
join = [0]
"""), out, log=lambda *_: None)
    assert SUMMARY_KEYS <= set(summary) and summary["surrogate"] is True
    assert summary["rounds_completed"] == 5 and summary["adapters_identical"] is True
    assert summary["final_heldout_loss"] < summary["initial_heldout_loss"]
    assert summary["centralized_heldout_loss"] < summary["initial_heldout_loss"]
    assert summary["payload_compression"] > 15            # top-k 3%: ~40x before zstd
    table = rows(out)
    assert len(table) == 12 * 5
    state = {(int(r["round"]), int(r["node"])): r for r in table}
    assert state[1, 0]["state"] == "left" and state[1, 1]["state"] == "crashed"
    assert state[2, 10]["state"] == "joined" and state[3, 0]["state"] == "joined"
    last = {r["adapter_sha256"] for (rnd, n), r in state.items()
            if rnd == 4 and r["state"] in ("active", "joined")}
    assert len(last) == 1
    # The crashed node's update never counted in round 1 (peers could not fetch it).
    assert all(int(state[1, n]["contributors"]) <= 8 for n in range(2, 10))
    for png in ("loss.png", "network.png"):
        assert (out / png).stat().st_size > 10_000


def test_virtual_engine_with_real_training_and_the_centralized_baseline(tmp_path):
    out = tmp_path / "out"
    summary = run_scenario(scenario(tmp_path, """
name = "tiny-real"
nodes = 3
rounds = 2
local_steps = 3
batch_size = 2
ctx = 32
lr = 0.003
codec = "ternary"
centralized_baseline = true
[data]
files_per_node = 4
eval_files_per_topic = 2
"""), out, log=lambda *_: None)
    assert summary["surrogate"] is False and summary["adapters_identical"] is True
    assert summary["final_heldout_loss"] < summary["initial_heldout_loss"]
    assert summary["centralized_heldout_loss"] < summary["initial_heldout_loss"]
    assert summary["reduction_captured"] is not None
    topics = json.loads((out / "data" / "topics.json").read_text())
    assert [list(t) for t in topics] == [["business"], ["sports"], ["tech"]]   # topic i mod 5
    assert len(list((out / "data" / "eval").iterdir())) == 10   # 2 per topic x 5


def test_processes_engine_real_nodes_on_loopback_via_the_bitswarm_command(tmp_path):
    out = tmp_path / "out"
    p = scenario(tmp_path, """
name = "proc"
engine = "processes"
nodes = 3
rounds = 2
local_steps = 2
codec = "fp16"
outer_lr = 0.7
outer_momentum = 0.9
round_timeout_s = 60
[data]
files_per_node = 5
eval_files_per_topic = 2
""")
    r = subprocess.run([sys.executable, "-c", "import sys; from bitswarm.simulations.cli import "
                        "bitswarm_main; sys.exit(bitswarm_main())", "simulate", "run", str(p),
                        "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "processes" and summary["rounds_completed"] == 2
    assert summary["adapters_identical"] is True
    assert 1.5 < summary["payload_compression"] < 3     # fp16: 2x before zstd
    assert summary["bytes_sent_total"] > 0
    table = rows(out)
    assert {r["state"] for r in table} == {"active"} and len(table) == 6
    assert all(int(r["contributors"]) == 3 for r in table)


@pytest.mark.skipif(netns.why_unavailable() is not None,
                    reason=f"shaped links: {netns.why_unavailable()}")
def test_processes_engine_bandwidth_shaped_in_namespaces(tmp_path):
    """Two nodes in their own namespaces, each upload capped at 2 Mbit/s by the kernel (netem,
    or tbf where the kernel lacks netem; the lab fails loudly if the qdisc is refused)."""
    from bitswarm.simulations.scenario import LinkSpec
    qdisc = netns.LinkLab(2, LinkSpec(bandwidth_mbit=2)).qdisc_args()
    assert qdisc[0] in ("netem", "tbf") and qdisc[qdisc.index("rate") + 1] == "2mbit"
    out = tmp_path / "out"
    summary = run_scenario(scenario(tmp_path, """
name = "shaped"
engine = "processes"
nodes = 2
rounds = 1
local_steps = 1
codec = "fp32"
round_timeout_s = 60
[data]
files_per_node = 4
eval_files_per_topic = 1
[link]
bandwidth_mbit = 2
"""), out, log=lambda *_: None)
    assert summary["rounds_completed"] == 1 and summary["adapters_identical"] is True
    logs = "".join((out / "nodes" / f"node{i}" / "stdout.txt").read_text() for i in range(2))
    assert "/ip4/10.88.0." in logs                          # they listened inside the lab


@pytest.mark.skipif(netns.why_unavailable() is None and netns.has_netem(),
                    reason="this kernel has netem: latency and loss run")
def test_latency_without_netem_fails_before_starting_with_the_reason(tmp_path):
    from bitswarm.simulations.scenario import ScenarioError
    with pytest.raises(ScenarioError, match="netem|namespaces need root|not installed"):
        run_scenario(scenario(tmp_path, """
name = "lat"
engine = "processes"
nodes = 2
rounds = 1
[data]
files_per_node = 2
eval_files_per_topic = 1
[link]
latency_ms = 40
"""), tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out" / "nodes").exists()


def test_sweep_over_dp_noise_reports_epsilon_per_value(tmp_path):
    """`bitswarm simulate sweep`: one run per value; with DP (clip 1, local noise) epsilon
    falls as the noise multiplier grows, and no noise reports no finite epsilon."""
    from bitswarm.simulations.runner import sweep
    p = scenario(tmp_path, """
name = "dp"
nodes = 4
rounds = 3
surrogate = true
local_steps = 3
dp_clip = 1.0
""")
    rows = sweep(p, "dp_noise", ["0", "1", "4"], tmp_path / "sw", log=lambda *_: None)
    eps = [r["dp_epsilon"] for r in rows]
    assert eps[0] is None and eps[1] > eps[2] > 0
    assert all(r["adapters_identical"] for r in rows)
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 5_000
    assert (tmp_path / "sw" / "sweep.md").read_text().count("\n") == 5
    summary = json.loads((tmp_path / "sw" / "dp_noise=4" / "summary.json").read_text())
    norms = summary["dp"]["update_norm_median"]       # what a user picks dp_clip from
    assert len(norms) == 3 and all(n > 0 for n in norms)
    from bitswarm.simulations.scenario import ScenarioError
    with pytest.raises(ScenarioError, match="not a top-level scenario key"):
        sweep(p, "colour", ["1"], tmp_path / "sw2")
    with pytest.raises(ScenarioError, match="dp_noise"):
        sweep(p, "dp_noise", ["-1"], tmp_path / "sw3")
