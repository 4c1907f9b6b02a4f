"""`--mdns` with real `node start` processes on a LAN the test builds: two Linux network
namespaces joined by a veth pair (10.77.<k>.1 and .2), removed afterwards. The nodes get no
--peer and no --bootstrap: they find each other by mDNS and federate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from bitswarm.simulations.local_swarm import prepare_documents

ARGS = ["--rounds", "2", "--local-steps", "2", "--ctx", "64", "--batch-size", "2", "--device",
        "cpu", "--min-peers", "1", "--round-timeout", "60", "--mdns"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def lan():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    tag = uuid.uuid4().hex[:6]
    names = [f"bsm{tag}a", f"bsm{tag}b"]
    subnet = int(tag[:2], 16) % 200 + 20
    try:
        for n in names:
            _ip("netns", "add", n)
            _ip("-n", n, "link", "set", "lo", "up")
        _ip("link", "add", f"vbs{tag}a", "netns", names[0], "type", "veth", "peer",
            "name", f"vbs{tag}b", "netns", names[1])
        for i, n in enumerate(names):
            dev = f"vbs{tag}{'ab'[i]}"
            _ip("-n", n, "addr", "add", f"10.77.{subnet}.{i + 1}/24", "dev", dev)
            _ip("-n", n, "link", "set", dev, "up", "multicast", "on")
        yield [(n, f"10.77.{subnet}.{i + 1}") for i, n in enumerate(names)]
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


def test_two_nodes_on_one_lan_find_each_other_by_mdns(tmp_path, lan):
    docs = prepare_documents(tmp_path, 2, files_per_node=8)
    procs = []
    try:
        for i, (ns, ip) in enumerate(lan):
            d = tmp_path / f"node{i}"
            d.mkdir()
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "bitswarm.node", "start",
                   "--swarm", "lan", "--data", str(docs[i]), "--data-dir", str(d),
                   "--listen", f"/ip4/{ip}/tcp/4001", "--seed", str(i), *ARGS]
            procs.append((d, subprocess.Popen(cmd, stdout=open(d / "stdout.txt", "w"),
                                              stderr=open(d / "stderr.txt", "w"))))
        for d, p in procs:
            assert p.wait(timeout=300) == 0, (d / "stderr.txt").read_text()[-3000:]
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
    shas = []
    for d, _ in procs:
        rounds = [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]
        rounds = [x for x in rounds if x.get("round", -1) >= 0]
        assert [len(x["contributors"]) for x in rounds] == [2, 2]
        shas.append(rounds[-1]["adapter_sha256"])
    assert shas[0] == shas[1]
    assert any("mDNS: connected to swarm member" in (d / "node.log").read_text() for d, _ in procs)
