"""`node start --secure-aggregation` with real processes on 127.0.0.1: three nodes finish two
secure rounds (keys, encrypted shares, masked inputs, unmask: federation/rounds/secure.py) on
one adapter, every round holding all three masked inputs, and the traffic audit (plaintext
recorded inside Noise, federation/wire_recorder.py) shows only masked updates went out; bad
flag combinations fail fast."""
from __future__ import annotations

import json
import subprocess
import sys

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


@pytest.mark.parametrize("flags, needle", [
    (["--secure-aggregation", "--dp-clip", "1"], "only --aggregation fedavg"),
    (["--secure-aggregation", "--aggregation", "fedavg"], "needs --dp-clip")])
def test_bad_secure_flags_fail_fast(tmp_path, flags, needle):
    docs = prepare_documents(tmp_path, 1, files_per_node=2)[0]
    r = subprocess.run([sys.executable, "-m", "bitswarm.node", "start", "--swarm", "s",
                        "--data", str(docs), "--data-dir", str(tmp_path / "n"), *flags],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and needle in r.stderr, r.stderr[-2000:]
