"""A node whose own training diverges (a learning rate far too high: the loss explodes past
2 ln V within a few steps) rolls back and goes on, with real `node start` processes: it never
exits, never publishes or saves the diverged adapter, never writes NaN into rounds.jsonl, and
follows the swarm's round record, ending on the same adapter as its healthy peer."""
from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file

from bitswarm.simulations.local_swarm import kill_all, prepare_documents, start_node, wait_all

ARGS = ["--rounds", "2", "--local-steps", "8", "--ctx", "64", "--batch-size", "4",
        "--device", "cpu", "--min-peers", "1", "--round-timeout", "10"]


def _strict_lines(p) -> list[dict]:
    def no_nan(x):
        raise AssertionError(f"non-JSON number {x} in rounds.jsonl")
    return [json.loads(x, parse_constant=no_nan)
            for x in (p.data_dir / "rounds.jsonl").read_text().splitlines()]


def test_a_diverging_node_rolls_back_and_follows_the_swarm(tmp_path):
    docs = prepare_documents(tmp_path, 2, files_per_node=10)
    procs = []
    try:
        healthy = start_node(0, tmp_path, docs[0], "rollback", [], [*ARGS, "--lr", "1e-3"], {})
        procs.append(healthy)
        addr = healthy.multiaddr(timeout_s=120)
        wild = start_node(1, tmp_path, docs[1], "rollback", [addr], [*ARGS, "--lr", "0.9"], {})
        procs.append(wild)
        wait_all(procs, 300)
    finally:
        kill_all(procs)
    lines = _strict_lines(wild)
    diverged = [x for x in lines if "diverged_round" in x]
    assert diverged and diverged[0]["lr"] == 0.45 and "2 ln vocab" in diverged[0]["reason"]
    rounds = {x["round"]: x for x in lines if x.get("round", -1) >= 0}
    assert sorted(rounds) == [0, 1]
    assert rounds[diverged[0]["diverged_round"]]["included"] is False     # nothing of it counted
    h_rounds = {x["round"]: x for x in _strict_lines(healthy) if x.get("round", -1) >= 0}
    assert [rounds[r]["adapter_sha256"] for r in (0, 1)] == [h_rounds[r]["adapter_sha256"] for r in (0, 1)]
    adapter = load_file(str(wild.data_dir / "adapter" / "adapter_model.safetensors"))
    assert all(np.isfinite(v).all() for v in adapter.values())
    assert "local training diverged" in wild.log_path.read_text()
