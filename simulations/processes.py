"""The processes engine: every node of a scenario is a real `node start` process (real
py-libp2p: Noise, yamux, gossipsub, the payload streams), on 127.0.0.1, or, when the scenario
shapes its links, each in its own network namespace behind `tc netem` (netns.py).

Nodes start one after another, each dialing the nodes already up. Churn is applied when the
swarm enters the round: a leaving node gets SIGINT (it stops cleanly), a crashing one SIGKILL
in the middle of its round, a joining one starts (again) on its data dir, so it resumes and
catches up. Per node and round the report takes the node's own rounds.jsonl; the payload bytes
come from the "update from … accepted (N bytes" lines of each node's log; the final held-out
loss is the swarm's final adapter evaluated on the scenario's evaluation folder (the per-round
curve is the mean of the nodes' own held-out splits, which is what each node measures).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .datasets import NodeData
from .local_swarm import NodeProc
from .scenario import Scenario, ScenarioError

_ACCEPTED = re.compile(r"round \d+: update from \S+ accepted \((\d+) bytes")


def tail(data_dir: Path, n: int = 3000) -> str:
    p = data_dir / "stderr.txt"
    return p.read_text()[-n:] if p.exists() else ""


def _jsonl(data_dir: Path) -> list[dict]:
    """Every complete line of the node's rounds.jsonl, in order."""
    p = data_dir / "rounds.jsonl"
    out = []
    for line in p.read_text().splitlines() if p.exists() else ():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue                          # a line being written
    return out


def rounds_of(data_dir: Path) -> list[dict]:
    return [rec for rec in _jsonl(data_dir) if "round" in rec]


def held_adapter(data_dir: Path) -> tuple[int, str] | None:
    """(k, sha256) of the adapter G_k a node held when it stopped, i.e. the one it saved last:
    the last line of its rounds.jsonl with an adapter, catch-up syncs ({"synced_to_round": k})
    included (a round line of round r holds G_{r+1}); None before any."""
    held = None
    for rec in _jsonl(data_dir):
        if "adapter_sha256" in rec and "synced_to_round" in rec:
            held = (rec["synced_to_round"], rec["adapter_sha256"])
        elif "adapter_sha256" in rec and rec.get("round", -1) >= 0:
            held = (rec["round"] + 1, rec["adapter_sha256"])
    return held


def node_args(s: Scenario) -> list[str]:
    args = ["--swarm", s.name, "--rounds", str(s.rounds), "--local-steps", str(s.local_steps),
            "--lr", str(s.lr), "--batch-size", str(s.batch_size), "--ctx", str(s.ctx),
            "--rank", str(s.rank), "--alpha", str(s.alpha), "--codec", s.codec,
            "--topk-fraction", str(s.topk_fraction), "--aggregation", s.aggregation,
            "--outer-lr", str(s.outer_lr), "--outer-momentum", str(s.outer_momentum),
            "--round-timeout", str(s.round_timeout_s), "--device", "cpu",
            # every node dials from 127.0.0.1 (or the lab's /16): one IP, many peers
            "--max-conns-per-ip", str(max(16, 2 * s.nodes))]
    if s.freeze_a:
        args.append("--freeze-a")
    if s.dp_clip:
        args += ["--dp-clip", str(s.dp_clip), "--dp-noise", str(s.dp_noise),
                 "--dp-delta", str(s.dp_delta)]
    if s.model != "default":
        args += ["--model", s.model]
    return args


def run_processes(s: Scenario, data: NodeData, out: Path, *, log=print):
    """Run `s` as real processes. Returns (result, centralized) like the virtual engine's
    (report.py). Raises ScenarioError when shaped links cannot be made here, RuntimeError
    with the node's log tail when a node fails or the swarm runs past its deadline."""
    from . import netns
    from .learners import ModelLearners
    from .virtual import membership
    shaped = s.link.shaped
    if shaped and (why := netns.why_unavailable(s.link)):
        raise ScenarioError(f"{s.path}: [link] shaping needs network namespaces: {why}")
    t0 = time.monotonic()
    plan = membership(s)
    first = s.nodes if s.initial_nodes == -1 else s.initial_nodes
    mp = (first - 1) if s.min_peers == -1 else s.min_peers
    base = node_args(s) + ["--min-peers", str(max(0, mp))]
    threads = str(max(1, (os.cpu_count() or 1) // max(1, s.nodes)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    procs: dict[int, NodeProc] = {}
    addrs: dict[int, str] = {}
    gone: dict[int, str] = {}                  # node -> "left" / "crashed"
    deadline = t0 + 300 + s.rounds * (2 * s.round_timeout_s + 30 + 3 * s.local_steps)
    lab = netns.LinkLab(s.nodes, s.link) if shaped else contextlib.nullcontext()
    with lab:
        def start(i: int, at_round: int) -> None:
            d = out / "nodes" / f"node{i}"
            d.mkdir(parents=True, exist_ok=True)
            listen = f"/ip4/{lab.ip[i]}/tcp/0" if shaped else "/ip4/127.0.0.1/tcp/0"
            peers = [a for j, a in addrs.items() if j in procs and procs[j].proc.poll() is None]
            cmd = [*(lab.exec_prefix(i) if shaped else []), sys.executable, "-m",
                   "bitswarm.node", "start", "--data", str(data.nodes[i]), "--data-dir", str(d),
                   "--listen", listen, "--seed", str(i), *base]
            # A full mesh up to 40 nodes (payloads come straight from their senders), else the
            # 16 most recent (the rest through the DHT-free relay path: fetch falls back).
            for p in peers if len(peers) <= 40 else peers[-16:]:
                cmd += ["--peer", p]
            popen = subprocess.Popen(cmd, stdout=open(d / "stdout.txt", "w"),
                                     stderr=open(d / "stderr.txt", "w"), env=env,
                                     stdin=subprocess.DEVNULL)
            procs[i] = NodeProc(i, d, data.nodes[i], popen, d / "stderr.txt", d / "stdout.txt")
            addrs[i] = procs[i].multiaddr(timeout_s=120)
            gone.pop(i, None)

        try:
            for i in range(first):
                start(i, 0)
            log(f"{s.name}: {first} node processes up after {time.monotonic() - t0:.0f} s")
            applied = 0
            while True:
                running = [p for p in procs.values() if p.proc.poll() is None]
                if not running:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the swarm ran past its deadline; node {running[0].index}:"
                                       f"\n{tail(running[0].data_dir)}")
                done = max((max((r["round"] for r in rounds_of(p.data_dir)), default=-1)
                            for p in procs.values()), default=-1)
                while applied <= min(done + 1, s.rounds - 1):
                    ev = plan[applied]
                    for i in sorted(ev["leave"]):
                        if i in procs and procs[i].proc.poll() is None:
                            procs[i].proc.send_signal(signal.SIGINT)
                            gone[i] = "left"
                    for i in sorted(ev["crash"]):
                        if i in procs and procs[i].proc.poll() is None:
                            procs[i].proc.kill()
                            gone[i] = "crashed"
                    for i in sorted(ev["join"]):
                        start(i, applied)
                    if any(ev.values()):
                        log(f"round {applied}: " + ", ".join(
                            f"{k} {sorted(v)}" for k, v in ev.items() if v))
                    applied += 1
                time.sleep(0.5)
            for p in procs.values():
                rc = p.proc.returncode
                if p.index not in gone and rc != 0:
                    raise RuntimeError(f"node {p.index} exited {rc}:\n{tail(p.data_dir)}")
        finally:
            for p in procs.values():
                if p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait()
    wall = time.monotonic() - t0
    learners = ModelLearners(s, data.nodes, data.eval, out / "work")
    return collect(s, out, learners, plan, wall), (
        learners.centralized(_checkpoints(s, out)) if s.centralized_baseline else None)


def _checkpoints(s: Scenario, out: Path) -> list[int]:
    steps, cps = 0, []
    for r in range(s.rounds):
        steps += s.local_steps * sum(
            1 for d in sorted((out / "nodes").iterdir())
            for rec in rounds_of(d) if rec["round"] == r and rec.get("tokens"))
        cps.append(steps)
    return cps


def collect(s: Scenario, out: Path, learners, plan, wall_s: float) -> dict:
    """rows / rounds / totals of the run from the nodes' rounds.jsonl and logs."""
    from bitswarm.formats.peft_adapter import load_adapter
    dirs = {int(d.name[4:]): d for d in (out / "nodes").iterdir() if d.name.startswith("node")}
    recs = {i: {r["round"]: r for r in rounds_of(d) if r["round"] >= 0} for i, d in dirs.items()}
    initial = [r["heldout_loss"] for d in dirs.values() for r in rounds_of(d)
               if r["round"] == -1 and r.get("heldout_loss") is not None]
    rows, per_round, sent_cum = [], [], 0
    for r in range(s.rounds):
        shas = Counter(recs[i][r]["adapter_sha256"] for i in recs if r in recs[i])
        losses = [recs[i][r]["heldout_loss"] for i in recs if r in recs[i]
                  and recs[i][r].get("heldout_loss") is not None]
        for i in sorted(recs):
            rec = recs[i].get(r)
            row = {"round": r, "node": i, "state": "active" if rec else "away"}
            if rec:
                row.update(trained=bool(rec.get("tokens")), included=rec.get("included"),
                           contributors=len(rec.get("contributors") or []),
                           adapter_sha256=rec["adapter_sha256"],
                           bytes_sent=rec.get("bytes_sent", 0),
                           bytes_received=rec.get("bytes_received", 0),
                           round_s=rec.get("round_s"), train_loss=rec.get("train_loss"),
                           divergence=0.0 if rec["adapter_sha256"] == shas.most_common(1)[0][0]
                           else float("nan"))
                sent_cum += row["bytes_sent"]
            rows.append(row)
        per_round.append({"round": r, "heldout_loss": sum(losses) / len(losses) if losses
                          else None, "active": sum(1 for i in recs if r in recs[i]),
                          "adapters_identical": len(shas) == 1, "completed": bool(shas),
                          "round_s": max((recs[i][r].get("round_s") or 0 for i in recs
                                          if r in recs[i]), default=0),
                          "bytes_sent_cum": sent_cum})
    payload_bytes = transfers = 0
    for d in dirs.values():
        log_path = d / "node.log"
        if log_path.exists():
            for m in _ACCEPTED.finditer(log_path.read_text(errors="replace")):
                payload_bytes += int(m.group(1))
                transfers += 1
    # The swarm's final adapter: the one most nodes held when they stopped (after the final
    # round's catch-ups: a node on a minority record of the last round re-syncs before it
    # exits), evaluated on the evaluation folder from a node's saved adapter.
    held = {i: held_adapter(d) for i, d in dirs.items()}
    done = {i: h[1] for i, h in held.items() if h is not None and h[0] >= s.rounds}
    last = Counter(done.values())
    major = last.most_common(1)[0][0] if last else None
    final_loss = None
    for i in recs:
        if done.get(i) == major:
            adapter, _, _ = load_adapter(dirs[i] / "adapter")
            final_loss = learners.evaluate(adapter)
            break
    if per_round and final_loss is not None:
        per_round[-1]["heldout_loss_eval_folder"] = final_loss
    return {"rows": rows, "rounds": per_round,
            "initial_loss": learners.evaluate(learners.initial),
            "nodes_initial_heldout": sum(initial) / len(initial) if initial else None,
            "final_eval_loss": final_loss, "bytes_sent_total": sent_cum,
            "final_adapters": len(last),          # among the nodes that reached G_rounds
            "payload_bytes": payload_bytes, "payload_transfers": transfers,
            "values_per_update": sum(v.size for v in learners.initial.values()),
            "wall_s": wall_s,
            "notes": ["per-round held-out loss: the mean of the nodes' own held-out splits; "
                      "final_heldout_loss: the swarm's final adapter on the evaluation folder"]}
