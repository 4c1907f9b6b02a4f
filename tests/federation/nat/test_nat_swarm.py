"""Two `node start` processes, each behind its own NAT, plus one public bootstrap node offering
`--relay`, all in network namespaces (conftest.py: the NAT lab).

The public node belongs to another swarm: it only answers the DHT and relays, so every update
the two NATed nodes aggregate came from each other, over a relayed connection or over a direct
one that DCUtR punched through both NATs. Each test asserts which path the nodes logged:

- both NATs map ports predictably ("cone"): the connection starts relayed and is upgraded to
  direct by a hole punch;
- one NAT picks a random port for every mapping (`--random-fully`, "symmetric"): the punch
  cannot pass, and the rounds complete through the relay.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bitswarm.simulations.local_swarm import prepare_documents

RELAY_IP = "203.0.113.10"
PORT = 4001
FAST = ["--local-steps", "3", "--ctx", "64", "--batch-size", "4", "--device", "cpu"]
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


class Node:
    def __init__(self, lab, where: str, name: str, run_dir: Path, docs: Path, args: list[str]):
        self.name, self.data_dir = name, run_dir / name
        self.data_dir.mkdir(parents=True)
        self.out = self.data_dir / "stdout.txt"
        cmd = [*lab.exec_prefix(where), "env", *[f"{k}={v}" for k, v in ENV.items()],
               sys.executable, "-m", "bitswarm.node", "start", "--data", str(docs),
               "--data-dir", str(self.data_dir), *args]
        self.proc = subprocess.Popen(cmd, stdout=open(self.out, "w"),
                                     stderr=open(self.data_dir / "stderr.txt", "w"),
                                     stdin=subprocess.DEVNULL)

    def log(self) -> str:
        path = self.data_dir / "node.log"
        return path.read_text() if path.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} node.log ---\n" + self.log()[-chars:]

    def nat_lines(self, last: int = 16) -> str:
        """Its first and last NAT-traversal log lines (AutoNAT, relay, paths, hole punches),
        which the round lines push out of tail(); short, so both nodes' fit in a CI excerpt."""
        keep = ("AutoNAT", "relay", "connection is", "hole punch", "NAT traversal", "refused")
        lines = [x[11:23] + x[x.find(":", 24) + 1:] for x in self.log().splitlines()
                 if any(k in x for k in keep)]
        if len(lines) > 2 * last:
            lines = [*lines[:last], f"[{len(lines) - 2 * last} lines]", *lines[-last:]]
        return f"--- {self.name} NAT lines ---\n" + "\n".join(lines)

    def multiaddr(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.out.read_text().splitlines():
                if line.startswith("listening on "):
                    return line.split(" ", 2)[2]
            assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}\n{self.tail()}"
            time.sleep(0.1)
        raise AssertionError(f"{self.name} printed no multiaddr in {timeout_s} s\n{self.tail()}")

    def peer_id(self, timeout_s: float = 60) -> str:
        return self.multiaddr(timeout_s).rsplit("/p2p/", 1)[1]

    def rounds(self) -> list[dict]:
        path = self.data_dir / "rounds.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        return [x for x in lines if x.get("round", -1) >= 0]


def _path_events(node: Node, peer: str) -> list[str]:
    """What `node` logged about its connection to `peer`: 'relayed', 'direct', 'hole punch'."""
    out = []
    for m in re.finditer(rf"peer {peer}: connection is (\w+)( \(hole punch)?", node.log()):
        out.append("hole punch" if m.group(2) else m.group(1))
    return out


def _timeline(node: Node) -> str:
    """Seconds from the node's transport start to its relayed connection and its hole punch."""
    stamps = {}
    for line in node.log().splitlines():
        for key, text in (("start", "listening on ["), ("relayed", "connection is relayed"),
                          ("direct", "(hole punch: upgraded")):
            if text in line and key not in stamps:
                stamps[key] = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) \
                    + int(line[20:23]) / 1000
    t0 = stamps.get("start")
    return ", ".join(f"{k} +{v - t0:.1f} s" for k, v in stamps.items() if k != "start" and t0)


def _run(nat_lab, tmp_path: Path, kinds: tuple[str, str], *, rounds: int = 2,
         steps: int = 3, until=None) -> dict:
    """Two NATed nodes and the public relay; they run `rounds` rounds, or, with `until`,
    until until(a, b) holds and they have 2 rounds done, then Ctrl-C (SIGINT, exit 0)."""
    lab = nat_lab(*kinds)
    tag = uuid.uuid4().hex[:6]
    docs = prepare_documents(tmp_path, 3, files_per_node=10)
    relay = Node(lab, "pub", "relay", tmp_path, docs[2],
                 ["--swarm", f"nat-relay-{tag}", "--relay", "--listen", f"/ip4/{RELAY_IP}/tcp/{PORT}",
                  "--min-peers", "1", "--round-timeout", "600", *FAST])
    nodes = []
    try:
        boot = relay.multiaddr(120)
        t0 = time.monotonic()
        for i, side in enumerate("ab"):
            nodes.append(Node(lab, f"n{side}", side, tmp_path, docs[i],
                              ["--swarm", f"nat-{tag}", "--bootstrap", boot, "--seed", str(i),
                               "--listen", f"/ip4/{lab.node_ip[side]}/tcp/{PORT}",
                               "--rounds", str(rounds), "--min-peers", "1", "--round-timeout",
                               "120", *FAST, "--local-steps", str(steps)]))
        a, b = nodes
        if until is not None:
            # generous: under a loaded CI machine start-up alone can take a minute per node
            deadline = time.monotonic() + 300
            while not (until(a, b) and min(len(a.rounds()), len(b.rounds())) >= 2):
                assert time.monotonic() < deadline, \
                    f"condition not met\n{a.nat_lines()}\n{b.nat_lines()}\n{a.tail(1500)}\n{b.tail(1500)}"
                assert a.proc.poll() is None and b.proc.poll() is None, f"{a.tail()}\n{b.tail()}"
                time.sleep(0.5)
            for n in nodes:
                n.proc.send_signal(signal.SIGINT)
        for n in nodes:
            try:
                rc = n.proc.wait(timeout=max(10.0, 330 - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{n.name} did not finish\n{a.tail()}\n{b.tail()}\n{relay.tail()}")
            assert rc == 0, f"{n.name} exited {rc}\n{n.tail()}\n{relay.tail()}"
        elapsed = time.monotonic() - t0
        ra, rb = a.rounds(), b.rounds()
        detail = f"\n{a.tail()}\n{b.tail()}"
        if until is not None:                # stopped mid-run: compare the rounds both completed
            ra, rb = ra[:min(len(ra), len(rb))], rb[:min(len(ra), len(rb))]
        else:
            assert len(ra) == rounds, detail
        assert [r["round"] for r in ra] == [r["round"] for r in rb] == list(range(len(ra))), detail
        both = {a.peer_id(), b.peer_id()}
        for r in ra + rb:
            assert set(r["contributors"]) == both, (r, detail)   # its own update and the other's
        assert ra[-1]["adapter_sha256"] == rb[-1]["adapter_sha256"], detail
        for n in nodes:
            assert "AutoNAT: this node is private" in n.log(), n.tail()
            assert "p2p-circuit" in n.log() and "reserved; announcing" in n.log(), n.tail()
        print(f"NAT {kinds}: both nodes done in {elapsed:.1f} s; "
              + "; ".join(f"{n.name}: {_timeline(n)}" for n in nodes))
        return {"a": a, "b": b, "a_id": a.peer_id(), "b_id": b.peer_id(), "elapsed_s": elapsed,
                "detail": detail}
    finally:
        relay.proc.send_signal(signal.SIGINT)
        for n in [relay, *nodes]:
            try:
                n.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()


def test_two_nodes_behind_cone_nats_hole_punch_to_a_direct_connection(nat_lab, tmp_path):
    # The swarm runs until both nodes logged the punch (about 4 s after the relayed connection).
    def punched(a, b):
        return "hole punch succeeded" in a.log() + b.log() and all(
            "(hole punch: upgraded" in n.log() for n in (a, b))
    run = _run(nat_lab, tmp_path, ("cone", "cone"), rounds=1000, until=punched)
    a_saw, b_saw = _path_events(run["a"], run["b_id"]), _path_events(run["b"], run["a_id"])
    # Reached through the relay first (neither node is reachable), then upgraded by DCUtR.
    assert a_saw[:1] == ["relayed"] and "hole punch" in a_saw, (a_saw, run["detail"])
    assert b_saw[:1] == ["relayed"] and "hole punch" in b_saw, (b_saw, run["detail"])
    assert "hole punch succeeded" in run["a"].log() + run["b"].log(), run["detail"]
    # One DCUtR session at a time (nat._LoggedDCUtR: the lower peer ID drives): each node's
    # "dialing" lines alternate with their outcomes up to the upgrade. Two sessions at once
    # dial the same TCP 4-tuple and collide.
    for n in (run["a"], run["b"]):
        events = [m.group(1) for m in re.finditer(
            r"hole punch(: dialing| succeeded| failed|: upgraded)", n.log())]
        first = events[:events.index(": upgraded")]
        assert all(x != y for x, y in zip(first, first[1:])) and first[:1] == [": dialing"], \
            (n.name, first, n.nat_lines())


def test_a_symmetric_nat_keeps_the_connection_relayed_and_rounds_complete(nat_lab, tmp_path):
    # The swarm runs until a node re-armed DCUtR after its 3 attempts failed (nat.PUNCH_RETRY_S).
    def retried(a, b):
        return "trying again (retry 1)" in a.log() + b.log()
    run = _run(nat_lab, tmp_path, ("cone", "symmetric"), rounds=1000, until=retried)
    a_saw, b_saw = _path_events(run["a"], run["b_id"]), _path_events(run["b"], run["a_id"])
    assert a_saw and set(a_saw) == {"relayed"}, (a_saw, run["detail"])
    assert b_saw and set(b_saw) == {"relayed"}, (b_saw, run["detail"])
    # DCUtR did try, gave up after its attempts, was re-armed, and never got through.
    assert "hole punch: dialing" in run["a"].log() + run["b"].log(), run["detail"]
    assert "hole punch succeeded" not in run["a"].log() + run["b"].log(), run["detail"]
