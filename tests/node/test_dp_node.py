"""DP-FedAvg flags with a real `node start`: each published update is clipped and noised, the
accountant's epsilon is in rounds.jsonl and status.json after every round, and the node stops
(exit 0, saying why) before a round would exceed --dp-epsilon-budget; a resumed node keeps
counting. Bad DP flags fail fast."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bitswarm.federation.privacy import GaussianRDPAccountant
from bitswarm.simulations.local_swarm import prepare_documents

NODE = [sys.executable, "-m", "bitswarm.node", "start"]


def _start(docs, d, *extra):
    return subprocess.run([*NODE, "--swarm", "dp", "--data", str(docs), "--data-dir", str(d),
                           "--rounds", "5", "--min-peers", "0", "--local-steps", "2", "--ctx",
                           "64", "--batch-size", "2", "--device", "cpu", *extra],
                          capture_output=True, text=True, timeout=300)


def test_epsilon_is_reported_and_the_budget_stops_the_node(tmp_path):
    docs = prepare_documents(tmp_path, 1, files_per_node=6)[0]
    d = tmp_path / "node"
    acc = GaussianRDPAccountant(1.0)
    budget = (acc.epsilon(1e-5, 2) + acc.epsilon(1e-5, 3)) / 2        # room for two updates
    dp = ["--dp-clip", "0.05", "--dp-noise", "1.0", "--dp-epsilon-budget", f"{budget:.4f}"]
    r = _start(docs, d, *dp)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]
    rounds = [x for x in lines if x.get("round", -1) >= 0]
    assert [x["dp_releases"] for x in rounds] == [1, 2]
    assert [x["dp_epsilon"] for x in rounds] == pytest.approx([acc.epsilon(1e-5, 1),
                                                              acc.epsilon(1e-5, 2)])
    assert json.loads((d / "status.json").read_text())["dp_epsilon"] == pytest.approx(
        acc.epsilon(1e-5, 2))
    assert "DP budget" in r.stderr and "clipped to 0.05" in (d / "node.log").read_text()
    again = _start(docs, d, *dp)                 # resumed: the spent budget is remembered
    assert again.returncode == 0 and "DP budget" in again.stderr
    assert len([x for x in map(json.loads, (d / "rounds.jsonl").read_text().splitlines())
                if x.get("round", -1) >= 0]) == 2


@pytest.mark.parametrize("flags, needle", [
    (["--dp-noise", "1.0"], "need --dp-clip"),
    (["--dp-clip", "0"], "--dp-clip: 0.0 is out of range"),
    (["--dp-clip", "1", "--dp-delta", "2"], "--dp-delta: 2.0 is out of range")])
def test_bad_dp_flags_fail_fast(tmp_path, flags, needle):
    docs = prepare_documents(tmp_path, 1, files_per_node=2)[0]
    r = _start(docs, tmp_path / "n", *flags)
    assert r.returncode == 2 and needle in r.stderr, r.stderr[-2000:]
