"""Protocol v2 end to end with real `node start` processes on 127.0.0.1: a node joining a
running swarm with one member's address, a node killed with SIGKILL mid-round and restarted,
and the README's two-node quickstart with one node much slower than the other.

Every node must end on the swarm's adapter: the last adapter SHA-256 each node logged (its
final round, or a re-sync after it) is the same for all.
"""
from __future__ import annotations

import json
import os
import signal
import time

from bitswarm.simulations.local_swarm import kill_all, prepare_documents, start_node, wait_all

FAST = ["--local-steps", "3", "--ctx", "64", "--batch-size", "4", "--device", "cpu"]
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _lines(p) -> list[dict]:
    path = p.data_dir / "rounds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _final_sha(p) -> str:
    return [x for x in _lines(p) if "adapter_sha256" in x][-1]["adapter_sha256"]


def _rounds(p) -> list[int]:
    return [x["round"] for x in _lines(p) if x.get("round", -1) >= 0]


def _wait(cond, timeout_s: float, what: str, procs) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs:
            if p.proc.poll() not in (None, 0):
                raise AssertionError(f"node {p.index} exited {p.proc.returncode}: "
                                     + p.log_path.read_text()[-3000:])
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_fourth_node_joins_at_round_2_with_only_a_bootstrap_address(tmp_path):
    docs = prepare_documents(tmp_path, 4, files_per_node=10)
    # Every node waits for 3 peer updates: until the fourth arrives, rounds close at their
    # 15 s deadline, so the swarm is in round 2 when it joins; then rounds close at once.
    args = ["--rounds", "5", "--min-peers", "3", "--round-timeout", "15", *FAST,
            "--local-steps", "8"]
    procs, addrs = [], []
    try:
        for i in range(3):
            procs.append(start_node(i, tmp_path, docs[i], "living", list(addrs), args, ENV))
            addrs.append(procs[-1].multiaddr(timeout_s=120))
        _wait(lambda: 1 in _rounds(procs[0]), 240, "the swarm's round 1", procs)
        late = start_node(3, tmp_path, docs[3], "living", [], [*args, "--bootstrap", addrs[1]],
                          ENV)
        procs.append(late)
        t_join = time.monotonic()
        _wait(lambda: any("synced_to_round" in x for x in _lines(late)), 120, "the late sync",
              procs)
        catch_up_s = time.monotonic() - t_join
        # node status shows the synced adapter at once (or a later round's, if one finished)
        def last_held():
            return [x["adapter_sha256"] for x in _lines(late) if "adapter_sha256" in x
                    and ("synced_to_round" in x or x.get("round", -1) >= 0)][-1]
        before = last_held()
        shown = json.loads((late.data_dir / "status.json").read_text())["adapter_sha256"]
        assert shown in (before, last_held()), (shown, before)
        wait_all(procs, 400)
    finally:
        kill_all(procs)
    assert len({_final_sha(p) for p in procs}) == 1, [_final_sha(p) for p in procs]
    sync = next(x for x in _lines(late) if "synced_to_round" in x)
    assert sync["synced_to_round"] == 2 and sync["signers"] == 3
    assert _rounds(late) == [2, 3, 4]
    for p in procs[:3]:
        assert _rounds(p) == [0, 1, 2, 3, 4]
    # Once it joined, the late node's updates count: rounds 3 and 4 hold four contributors.
    counts = [len(x["contributors"]) for x in _lines(procs[0]) if x.get("round", -1) >= 0]
    assert counts[:2] == [3, 3] and counts[3:] == [4, 4], counts
    print(f"late joiner: started to synced in {catch_up_s:.1f} s")


def test_a_node_killed_in_round_2_resumes_and_ends_with_the_others(tmp_path):
    docs = prepare_documents(tmp_path, 3, files_per_node=10)
    args = ["--rounds", "5", "--min-peers", "2", "--round-timeout", "45", *FAST]
    procs, addrs = [], []
    try:
        for i in range(3):
            procs.append(start_node(i, tmp_path, docs[i], "kill9", list(addrs), args, ENV))
            addrs.append(procs[-1].multiaddr(timeout_s=120))
        victim = procs[2]
        _wait(lambda: "round 2: training" in victim.log_path.read_text()
              or "round 2: publishing" in victim.log_path.read_text(), 300, "round 2", procs)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        before = _lines(victim)
        assert _rounds(victim) == [0, 1]
        procs[2] = restarted = start_node(2, tmp_path, docs[2], "kill9", addrs[:2], args, ENV)
        wait_all(procs, 400)
    finally:
        kill_all(procs)
    assert len({_final_sha(p) for p in procs}) == 1, [_final_sha(p) for p in procs]
    after = _lines(restarted)[len(before):]
    session = next(x for x in after if "session" in x)
    assert session["resumed_from"] == 1 and session["first_round"] == 2
    rounds_after = [x["round"] for x in after if x.get("round", -1) >= 0]
    assert rounds_after and rounds_after[0] >= 2 and rounds_after[-1] == 4   # continued, not reset
    assert not any(x.get("round") == -1 for x in after)   # no fresh start from the seeded adapter


def test_quickstart_with_one_node_much_slower_ends_on_one_adapter(tmp_path):
    """The README's two terminals, defaults as written (`--min-peers 1`), with terminal 2's
    node training 50x more steps per round, longer than the first waits for it (10 s here): the
    fast node closes each round alone, the slow one adopts the swarm's records (its late
    updates are dropped) or catches up to the head, and both end on the same adapter."""
    docs = prepare_documents(tmp_path, 2, files_per_node=10)
    env = {**ENV, "BITSWARM_ROUND_TIMEOUT": "10", "BITSWARM_CTX": "64", "BITSWARM_BATCH_SIZE": "4",
           "BITSWARM_DEVICE": "cpu"}
    procs = []
    try:
        a = start_node(0, tmp_path, docs[0], "docs", [], ["--rounds", "3", "--local-steps", "2"],
                       {**env})
        procs.append(a)
        addr = a.multiaddr(timeout_s=120)
        b = start_node(1, tmp_path, docs[1], "docs", [addr], ["--rounds", "3", "--local-steps", "100"],
                       {**env})
        procs.append(b)
        wait_all(procs, 400)
    finally:
        kill_all(procs)
    assert _final_sha(a) == _final_sha(b)
    late = [x for x in _lines(b) if x.get("round", -1) >= 0 and not x["included"]]
    assert late, "the slow node was never late: the test did not exercise a deadline"
    assert "came too late" in b.log_path.read_text()
    assert all(x["contributors"] == [x["proposer"]] for x in _lines(a) if x.get("round", -1) >= 0)


def test_two_nodes_join_by_name_with_only_a_bootstrap_node_of_another_swarm(tmp_path):
    """`--bootstrap` of a node that is not even a member (it trains in swarm 'lobby'): the two
    members find each other through DHT provider records, federate and agree."""
    docs = prepare_documents(tmp_path, 3, files_per_node=10)
    procs = []
    try:
        lobby = start_node(0, tmp_path, docs[0], "lobby", [],
                           ["--rounds", "1000", "--min-peers", "0", *FAST], ENV)
        procs.append(lobby)
        addr = lobby.multiaddr(timeout_s=120)
        members = [start_node(i, tmp_path, docs[i], "docs", [],
                              ["--rounds", "2", "--min-peers", "1", "--round-timeout", "60",
                               "--bootstrap", addr, *FAST], ENV) for i in (1, 2)]
        procs += members
        wait_all(members, 300)
    finally:
        kill_all(procs)
    assert _final_sha(members[0]) == _final_sha(members[1])
    for p in members:
        rounds = [x for x in _lines(p) if x.get("round", -1) >= 0]
        assert [len(x["contributors"]) for x in rounds] == [2, 2], rounds
