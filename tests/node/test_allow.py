"""Admission by allow-list (`--allow PEER_ID`, `--allow-file`): real `node start` processes.

A and B allow only each other; C is in the same swarm and allows anyone. A and B aggregate just
the two of them, identically, and log why C's updates do not count; a bad allow-list entry
fails fast naming the file and line."""
import subprocess
import sys

from bitswarm.simulations.local_swarm import kill_all, prepare_documents, start_node, wait_all

NODE = [sys.executable, "-m", "bitswarm.node"]
SWARM = "allow-test"
ARGS = ["--rounds", "2", "--local-steps", "2", "--ctx", "64", "--batch-size", "2",
        "--device", "cpu", "--round-timeout", "60"]


def _peer_id(data_dir) -> str:
    r = subprocess.run([*NODE, "id", "--data-dir", str(data_dir)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_only_allowed_peers_updates_count(tmp_path):
    docs = prepare_documents(tmp_path, 3, files_per_node=8)
    ids = [_peer_id(tmp_path / f"node{i}") for i in range(3)]
    allow_file = tmp_path / "allowed.txt"
    allow_file.write_text(f"# the two of us\n{ids[1]}  # B\n")
    procs = []
    try:
        a = start_node(0, tmp_path, docs[0], SWARM, [], [*ARGS, "--min-peers", "1",
                                                          "--allow-file", str(allow_file)], {})
        procs.append(a)
        addr = a.multiaddr(timeout_s=120)
        # C waits for (and accepts) A and B, so it stays in the swarm republishing its updates
        c = start_node(2, tmp_path, docs[2], SWARM, [addr], [*ARGS, "--min-peers", "2",
                                                              "--round-timeout", "15"], {})
        procs.append(c)
        b = start_node(1, tmp_path, docs[1], SWARM, [addr], [*ARGS, "--min-peers", "1",
                                                              "--allow", ids[0]], {})
        procs.append(b)
        wait_all(procs, 300)
    finally:
        kill_all(procs)
    ra, rb = ([r for r in p.rounds() if r["round"] >= 0] for p in (a, b))
    assert len(ra) == len(rb) == 2
    for x, y in zip(ra, rb):
        assert x["contributors"] == y["contributors"] == sorted(ids[:2])
        assert x["adapter_sha256"] == y["adapter_sha256"]
    assert "sender not on the allow-list" in a.log_path.read_text()


def test_a_bad_allow_list_fails_fast(tmp_path):
    f = tmp_path / "allowed.txt"
    f.write_text("12D3KooWnotapeerid!\n")
    docs = prepare_documents(tmp_path, 1, files_per_node=2)[0]
    r = subprocess.run([*NODE, "start", "--swarm", "s", "--data", str(docs), "--data-dir",
                        str(tmp_path / "n"), "--allow-file", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"--allow-file {f}:1: '12D3KooWnotapeerid!' is not a peer ID" in r.stderr
    assert not (tmp_path / "n").exists()
