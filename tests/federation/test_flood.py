"""Floods against real `node start` processes on 127.0.0.1, measured against an unattacked run of
the same swarm in this module.

Two honest nodes train 4 rounds together. In the attacked run, while they do, node 0 takes at
once (tests/federation/helpers_fed_flood.py, three processes):
  window  a peer ignoring yamux flow control, pushing MBs per stream it never gets read;
  gossip  thousands of messages/s from 256 keys: junk, validly signed manifests for a wrong
          base model, mis-signed ones; a fresh identity each time it is blocked;
  conns   300 connections (fresh identities, 64 at a time), each opening 80 streams.
Both honest nodes must finish every round on the same adapter from the two of them only, with
held-out loss within 2% of the unattacked run, node 0's peak RSS within 1.5x of its unattacked
peak, and node 0's log must grow by a bounded number of lines (not one per junk message).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bitswarm.node.runtime import swarm_topic
from bitswarm.simulations.local_swarm import prepare_documents, start_node

FLOOD = Path(__file__).with_name("helpers_fed_flood.py")
SWARM = "flood-test"
ARGS = ["--rounds", "4", "--min-peers", "1", "--local-steps", "3", "--ctx", "64", "--batch-size", "4",
        "--device", "cpu", "--round-timeout", "90"]
MAX_EXTRA_LOG_LINES = 300


class PeakRss:
    """Polls a process's VmHWM (the kernel's peak resident set, kB) until it exits."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.1)


def _wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.2)


def _last_stats(proc: subprocess.Popen) -> dict:
    out = proc.stdout.read() if proc.stdout else ""
    stats = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return stats[-1] if stats else {}


def _swarm(run_dir: Path, attack: bool) -> dict:
    """Run the two-node swarm (attacked or not) to its end -> rounds, peak RSS, log, stats."""
    docs = prepare_documents(run_dir, 2, files_per_node=12)
    nodes, attackers = [], {}
    try:
        n0 = start_node(0, run_dir, docs[0], SWARM, [], ARGS, {})
        nodes.append(n0)
        addr = n0.multiaddr(timeout_s=120)
        rss = PeakRss(n0.proc.pid)
        n1 = start_node(1, run_dir, docs[1], SWARM, [addr], ARGS, {})
        nodes.append(n1)
        n1_id = n1.multiaddr(timeout_s=120).rsplit("/", 1)[1]
        # The honest pair first (the floods then take node 0's spare connection slots).
        _wait_for(lambda: n1_id in n0.log_path.read_text(), 60, "connection from node 1")
        started = time.monotonic()
        if attack:
            # All attackers share 127.0.0.1, and the connection flood takes every per-IP slot
            # left: it starts once the other two had their seconds.
            for mode, seconds, delay in (("window", 5, 0), ("gossip", 5, 0), ("conns", 240, 3)):
                attackers[mode] = subprocess.Popen(
                    [sys.executable, str(FLOOD), mode, addr, swarm_topic(SWARM), str(seconds), SWARM,
                     str(delay)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for n in nodes:
            assert n.proc.wait(timeout=300) == 0, n.log_path.read_text()[-3000:]
        attack_s = time.monotonic() - started
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.kill()
        for p in attackers.values():
            p.terminate()             # its last stats line holds the totals
    stats = {mode: _last_stats(p) for mode, p in attackers.items()}
    for p in attackers.values():
        p.wait(timeout=30)
    return {"rounds": [[r for r in n.rounds() if r["round"] >= 0] for n in nodes],
            "peak_kb": rss.peak_kb, "log": n0.log_path.read_text().splitlines(), "stats": stats, "attack_s": attack_s}


@pytest.fixture(scope="module")
def unattacked(tmp_path_factory) -> dict:
    return _swarm(tmp_path_factory.mktemp("unattacked"), attack=False)


def _check_honest_rounds(run: dict) -> None:
    r0, r1 = run["rounds"]
    assert len(r0) == len(r1) == 4
    for a, b in zip(r0, r1):
        assert a["adapter_sha256"] == b["adapter_sha256"]
        assert len(a["contributors"]) == 2 and a["contributors"] == b["contributors"]


def test_floods_leave_the_honest_swarm_unharmed(tmp_path: Path, unattacked: dict) -> None:
    _check_honest_rounds(unattacked)
    run = _swarm(tmp_path, attack=True)
    stats = run["stats"]
    print("\nFLOOD", json.dumps({"unattacked_peak_kb": unattacked["peak_kb"], "attacked_peak_kb": run["peak_kb"],
                      "unattacked_loss": unattacked["rounds"][0][-1]["heldout_loss"],
                      "attacked_loss": run["rounds"][0][-1]["heldout_loss"],
                      "log_lines": [len(unattacked["log"]), len(run["log"])], "attack_s": run["attack_s"],
                      "stats": stats}))
    _check_honest_rounds(run)
    base_loss, loss = unattacked["rounds"][0][-1]["heldout_loss"], run["rounds"][0][-1]["heldout_loss"]
    assert abs(loss - base_loss) <= 0.02 * base_loss, (base_loss, loss)
    assert run["peak_kb"] <= 1.5 * unattacked["peak_kb"], (unattacked["peak_kb"], run["peak_kb"], stats)

    # The floods were real...
    assert stats["window"].get("bytes_pushed", 0) >= 8 << 20, stats      # 32 windows' worth
    # (it is blocked ~0.2 s into each identity, so most of its time goes into reconnecting)
    assert stats["gossip"].get("messages_sent", 0) >= 2_000, stats
    conns = stats["conns"]
    assert conns.get("dials", 0) >= 100, stats
    assert conns.get("streams_opened", 0) + conns.get("streams_refused", 0) >= 1_000, stats
    # ...and each was answered, in a bounded number of log lines.
    log = "\n".join(run["log"])
    # (the per-connection stream cap is not reliably reached here: on 2 cores shared with two
    # training nodes the attacker's streams time out first; tests/federation/transport/
    # test_peer_guard.py shows it)
    for decision in ("exceeded the yamux receive window", "blocked for", "refused:"):
        assert decision in log, f"no {decision!r} line in node 0's log"
    extra = len(run["log"]) - len(unattacked["log"])
    assert extra <= MAX_EXTRA_LOG_LINES, (extra, stats)
