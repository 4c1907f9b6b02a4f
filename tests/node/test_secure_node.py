"""`node start --secure-aggregation` with real processes on 127.0.0.1: three nodes finish two
secure rounds (keys, encrypted shares, masked inputs, unmask: federation/rounds/secure.py) on
one adapter, every round holding all three masked inputs, and the traffic audit (plaintext
recorded inside Noise, federation/wire_recorder.py) shows only masked updates went out; bad
flag combinations fail fast."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import msgpack
import pytest

from bitswarm.federation.codecs import CODECS
from bitswarm.federation.secagg.messages import MASKED_CODEC
from bitswarm.simulations.local_swarm import kill_all, prepare_documents, start_node, wait_all

FAST = ["--local-steps", "2", "--ctx", "64", "--batch-size", "2", "--device", "cpu"]
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
SECURE = ["--secure-aggregation", "--aggregation", "fedavg", "--dp-clip", "1.0"]


def _lines(p) -> list[dict]:
    path = p.data_dir / "rounds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_three_secure_nodes_finish_two_rounds_on_one_adapter(tmp_path):
    docs = prepare_documents(tmp_path, 3, files_per_node=4)
    args = ["--rounds", "2", "--min-peers", "2", "--round-timeout", "30", *FAST, *SECURE]
    procs, addrs = [], []
    try:
        for i in range(3):
            # The traffic audit: every plaintext byte each node writes inside Noise.
            wire = {"BITSWARM_RECORD_WIRE": str(tmp_path / f"wire{i}.bin")}
            procs.append(start_node(i, tmp_path, docs[i], "secagg", list(addrs), args,
                                    {**ENV, **wire}))
            addrs.append(procs[-1].multiaddr(timeout_s=120))
        wait_all(procs, 240)
    finally:
        kill_all(procs)
    finals = set()
    for p in procs:
        rounds = [x for x in _lines(p) if x.get("round", -1) >= 0]
        assert [x["round"] for x in rounds] == [0, 1], p.log_path.read_text()[-3000:]
        assert all(len(x["contributors"]) == 3 and x["included"] for x in rounds)
        finals.add(rounds[-1]["adapter_sha256"])
        assert "publishing masked input" in p.log_path.read_text()
        # What went out: the secure round's messages and masked inputs, and no update in a
        # plain codec (every announced payload is a masked one).
        wire = (tmp_path / f"wire{p.index}.bin").read_bytes()
        announced = {name for name in [*CODECS, MASKED_CODEC]
                     if b"\xa5codec" + msgpack.packb(name) in wire}     # manifest bodies
        assert b"BSSA" in wire and b"BSMI" in wire and announced == {MASKED_CODEC}
    assert len(finals) == 1


def _kill_after_masked_input(p, rnd: int, timeout_s: float) -> None:
    """SIGKILL node p as soon as its log says it is publishing its masked input of round rnd:
    a member gone after the cohort was fixed (its keys and shares are out), mid-round."""
    deadline = time.monotonic() + timeout_s
    needle = f"round {rnd}: publishing masked input"
    while time.monotonic() < deadline:
        if needle in p.log_path.read_text():
            p.proc.kill()
            p.proc.wait()
            return
        if p.proc.poll() is not None:
            raise RuntimeError(f"node {p.index} exited early:\n" + p.log_path.read_text()[-3000:])
        time.sleep(0.05)
    raise TimeoutError(f"node {p.index} never reached round {rnd}'s masked input")


def test_secure_rounds_survive_one_and_then_two_dropouts_mid_round(tmp_path):
    """5 secure nodes, real processes. Round 0 with all five; in round 1 one member is killed
    right after its keys and shares went out (as it publishes its masked input), in round 2 a
    second one: the survivors (3 of the 4, then 3 of the 5 expected, each >= the Shamir
    threshold 3) unmask the round without them and all live nodes end on one adapter."""
    docs = prepare_documents(tmp_path, 5, files_per_node=3)
    args = ["--rounds", "3", "--min-peers", "4", "--round-timeout", "30", *FAST, *SECURE]
    procs, addrs = [], []
    try:
        for i in range(5):
            procs.append(start_node(i, tmp_path, docs[i], "secagg-drop", list(addrs), args, ENV))
            addrs.append(procs[-1].multiaddr(timeout_s=120))
        _kill_after_masked_input(procs[4], 1, 240)
        _kill_after_masked_input(procs[3], 2, 240)
        wait_all(procs[:3], 300)
    finally:
        kill_all(procs)
    finals = set()
    for p in procs[:3]:
        rounds = [x for x in _lines(p) if x.get("round", -1) >= 0]
        assert [x["round"] for x in rounds] == [0, 1, 2], p.log_path.read_text()[-3000:]
        assert len(rounds[0]["contributors"]) == 5
        # a dropout's masked input may or may not have left before the kill: >= 3 survivors
        assert 3 <= len(rounds[1]["contributors"]) <= 5 and rounds[1]["included"]
        assert 3 <= len(rounds[2]["contributors"]) <= 4 and rounds[2]["included"]
        finals.add(rounds[-1]["adapter_sha256"])
        assert "abandoned" not in p.log_path.read_text()
    assert len(finals) == 1


@pytest.mark.parametrize("flags, needle", [
    (["--secure-aggregation", "--dp-clip", "1"], "only --aggregation fedavg"),
    (["--secure-aggregation", "--aggregation", "fedavg"], "needs --dp-clip")])
def test_bad_secure_flags_fail_fast(tmp_path, flags, needle):
    docs = prepare_documents(tmp_path, 1, files_per_node=2)[0]
    r = subprocess.run([sys.executable, "-m", "bitswarm.node", "start", "--swarm", "s",
                        "--data", str(docs), "--data-dir", str(tmp_path / "n"), *flags],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and needle in r.stderr, r.stderr[-2000:]
