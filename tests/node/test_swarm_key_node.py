"""`node swarm-key new FILE` and `node start --swarm-key FILE` with real processes: two nodes
holding the key federate; a node with another key cannot connect to them and says so (exit
3); a bad key file fails fast (exit 2), naming the file and the expected form."""
from __future__ import annotations

import json
import subprocess
import sys

from bitswarm.simulations.local_swarm import prepare_documents, start_node

NODE = [sys.executable, "-m", "bitswarm.node"]
ARGS = ["--rounds", "2", "--local-steps", "2", "--ctx", "64", "--batch-size", "2",
        "--device", "cpu", "--min-peers", "1"]


def _key(path) -> None:
    r = subprocess.run([*NODE, "swarm-key", "new", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "wrote a new swarm key" in r.stdout, r.stderr


def test_swarm_key_admits_holders_only(tmp_path):
    _key(tmp_path / "swarm.key")
    _key(tmp_path / "other.key")
    again = subprocess.run([*NODE, "swarm-key", "new", str(tmp_path / "swarm.key")],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "never overwritten" in again.stderr
    docs = prepare_documents(tmp_path, 3, files_per_node=8)
    key = ["--swarm-key", str(tmp_path / "swarm.key")]
    procs = []
    try:
        a = start_node(0, tmp_path, docs[0], "pnet", [], [*ARGS, *key, "--round-timeout", "60"], {})
        procs.append(a)
        addr = a.multiaddr(timeout_s=120)
        b = start_node(1, tmp_path, docs[1], "pnet", [addr], [*ARGS, *key, "--round-timeout", "60"], {})
        outsider = start_node(2, tmp_path, docs[2], "pnet", [addr],
                              [*ARGS, "--swarm-key", str(tmp_path / "other.key"),
                               "--rounds", "1", "--round-timeout", "10"], {})
        procs += [b, outsider]
        for p in (a, b):
            assert p.proc.wait(timeout=300) == 0, p.log_path.read_text()[-3000:]
        assert outsider.proc.wait(timeout=120) == 3
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
    for p in (a, b):
        rounds = [json.loads(x) for x in (p.data_dir / "rounds.jsonl").read_text().splitlines()]
        assert [len(x["contributors"]) for x in rounds if x.get("round", -1) >= 0] == [2, 2]
    assert "no peer ever connected" in outsider.log_path.read_text()


def test_a_bad_swarm_key_file_fails_fast(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello world " * 50)
    r = subprocess.run([*NODE, "start", "--swarm", "s", "--data", str(tmp_path / "docs"),
                        "--data-dir", str(tmp_path / "dd"), "--swarm-key", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("node start: error: --swarm-key ")
    assert "expected 3 lines" in r.stderr and not (tmp_path / "dd").exists()
