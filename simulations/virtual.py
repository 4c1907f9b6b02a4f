"""The virtual-time engine: every node of a scenario in one trio process, on trio's MockClock.

Each node runs the real protocol code — a RoundCoordinator (federation/rounds) with its wire
format, codecs, round records, rule and outer step — over memory_net's in-memory transport,
whose links delay and drop transfers by the scenario's [link] numbers. Training is real
(learners.ModelLearners: the node's own LocalTrainer on the NumPy backend) unless the
scenario asks for the quadratic surrogate (learners.SurrogateLearners), and the report says
which. Virtual time jumps whenever every task waits, so round deadlines and latencies cost
nothing; training and the protocol's own CPU work run at real speed.

Per round: nodes named by [[churn]] (or drawn by `churn_fraction`) leave (their coordinator is
cancelled and they vanish from the network), crash (killed just after publishing their
update: peers' fetches of it fail) or join (a coordinator starting from the adapter the node
last held, which catches up to the swarm's head by state sync before it trains). The cohort
(every active node, or `cohort` of them drawn per round) trains `local_steps` and exchanges;
the other active nodes follow (adopt the round's record without an update).

DP (`dp_clip`, `dp_noise`): every trained update is clipped and noised before the exchange,
as `node start --dp-clip --dp-noise` does. With `secure_aggregation` the coordinators run
Bonawitz et al.'s masked rounds (federation/rounds/secure.py) and each member adds only its
share of the noise (member_noise): distributed DP, as the node does with
`--secure-aggregation`.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation.aggregation import AGGREGATION_RULES, NesterovOuter
from bitswarm.federation.codecs import make_codec
from bitswarm.federation.privacy import GaussianRDPAccountant, clip_and_noise
from bitswarm.federation.rounds import RoundAbandoned, RoundCoordinator, SwarmMovedOn
from bitswarm.federation.rounds.secure import threshold

from .memory_net import MemoryNetwork
from .scenario import Scenario

SWARM_BASE = "ab" * 32          # the virtual swarm's base-model hash (all nodes share it)


async def _inline(fn):
    return fn()


@dataclass
class VNode:
    index: int
    key_pair: object = field(default_factory=create_new_key_pair)
    coord: RoundCoordinator | None = None
    scope: trio.CancelScope | None = None
    held: dict | None = None             # the adapter it held when it left
    held_round: int = 0
    bytes_before: int = 0                # bytes sent by its earlier transports (before leaving)


def membership(s: Scenario) -> list[dict[str, set[int]]]:
    """Per round: {"leave", "crash", "join"} node sets, from [[churn]] and churn_fraction
    (each round after the first, ceil(churn_fraction x nodes) nodes drawn afresh are away;
    seeded)."""
    rng = np.random.default_rng(s.seed + 99)
    first = s.nodes if s.initial_nodes == -1 else s.initial_nodes
    online = set(range(first))
    plan = []
    for r in range(s.rounds):
        ev = {"leave": set(), "crash": set(), "join": set()}
        if s.churn_fraction and r > 0:
            # At least the stated share: 30% of 8 nodes is 3 away, not 2.
            k = min(s.nodes - 1, math.ceil(s.churn_fraction * s.nodes - 1e-9))
            away = set(rng.choice(s.nodes, size=k, replace=False).tolist())
            ev["leave"] = online & away
            ev["join"] = set(range(s.nodes)) - away - online
        for e in s.churn:
            if e.round == r:
                ev["leave"] |= set(e.leave) & online
                ev["crash"] |= set(e.crash) & online
                ev["join"] |= set(e.join) - online
        online = (online - ev["leave"] - ev["crash"]) | ev["join"]
        plan.append(ev)
    return plan


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None     # sigma = 0: no privacy (JSON has no inf)


def member_noise(s: Scenario, cohort_size: int) -> float:
    """The noise multiplier each member of a cohort of `cohort_size` adds to its clipped update.
    Local DP: the whole sigma (every update is a Gaussian release on its own). Secure
    aggregation: a revealed sum holds at least t = threshold(cohort_size) members' updates, so
    each adds sigma / sqrt(t) and the sum carries std >= sigma x C (node/runtime.member_noise,
    the same rule with --min-peers + 1 = the cohort). A masking cohort that ends smaller (a
    member gone before its keys) reveals nothing: each coordinator's secure_min_sum is t, as
    node start sets it (docs/protocol.md, "Differential privacy (distributed)")."""
    if not s.secure_aggregation:
        return s.dp_noise
    return s.dp_noise / math.sqrt(threshold(cohort_size))


def sent_total(nodes: list[VNode], online: set[int]) -> int:
    """Bytes all nodes sent so far (the transports of nodes that left included)."""
    return sum(n.bytes_before + (n.coord.transport.bytes_sent if n.index in online else 0)
               for n in nodes)


def run_virtual(s: Scenario, learners, *, log=print) -> dict:
    """Run scenario `s` with `learners` (learners.py). Returns {"rows": per node and round,
    "rounds": per round, "initial_loss", "bytes_sent_total", "payload_bytes",
    "payload_transfers", "wall_s"} (see report.py for the fields)."""
    t_wall = time.monotonic()
    n_values = sum(int(np.prod(sh)) for sh in learners.shapes.values())
    plan = membership(s)
    first = s.nodes if s.initial_nodes == -1 else s.initial_nodes
    rows: list[dict] = []
    per_round: list[dict] = []
    initial_loss = learners.evaluate(learners.initial)
    # DP-FedAvg with local noise: every released update is clipped and noised (as `node start
    # --dp-clip --dp-noise` does); each node's accountant counts its releases.
    dp_rng = np.random.default_rng(s.seed + 4242)
    accountants = [GaussianRDPAccountant(s.dp_noise) for _ in range(s.nodes)] \
        if s.dp_clip else None

    async def main():
        L = s.link
        net = MemoryNetwork(latency_s=max(L.latency_ms / 1000, 0.001),
                            bandwidth_Bps=L.bandwidth_mbit * 125_000 or None, loss=L.loss,
                            seed=s.seed, buffer=max(256, 4 * s.nodes), record_published=False)
        nodes = [VNode(i) for i in range(s.nodes)]
        online: set[int] = set()
        rng = np.random.default_rng(s.seed + 7)

        async def run_coord(node: VNode, *, task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                node.scope = scope
                await node.coord.run(task_status=task_status)

        async def start(nursery, i: int):
            node = nodes[i]
            transport, _ = net.add(node.key_pair)
            node.coord = RoundCoordinator(
                transport, node.key_pair, swarm=s.name, base_model=SWARM_BASE,
                lora=learners.lora, expected_shapes=learners.shapes,
                initial_adapter=node.held or learners.initial, initial_round=node.held_round,
                min_peers=0, round_timeout_s=s.round_timeout_s, settle_s=5.0,
                fetch_timeout_s=min(30.0, s.round_timeout_s),
                republish_interval_s=s.republish_s,
                codec=make_codec(s.codec, topk_fraction=s.topk_fraction),
                aggregation=AGGREGATION_RULES[s.aggregation](),
                outer=None if (s.outer_lr, s.outer_momentum) == (1.0, 0.0)
                else NesterovOuter(s.outer_lr, s.outer_momentum),
                dp=(s.dp_clip, s.dp_noise) if s.dp_clip else None,
                secure_aggregation=s.secure_aggregation, run_blocking=_inline)
            await nursery.start(run_coord, node)
            online.add(i)

        def stop(i: int):
            node = nodes[i]
            node.held, node.held_round = node.coord.adapter, node.coord.round
            node.bytes_before += node.coord.transport.bytes_sent
            node.scope.cancel()
            net.remove(node.coord.peer_id)
            online.discard(i)

        async with trio.open_nursery() as nursery:
            for i in range(first):
                await start(nursery, i)
            for r in range(s.rounds):
                ev = plan[r]
                for i in sorted(ev["leave"]):
                    stop(i)
                joined = sorted(ev["join"])
                for i in joined:
                    await start(nursery, i)
                if joined:                      # hear one republish, then catch up
                    await trio.sleep(s.republish_s + 0.5)
                active = sorted(online)
                for i in active:
                    c = nodes[i].coord
                    if c.round < r:
                        await c.catch_up()
                cohort = active if s.cohort == -1 or s.cohort >= len(active) else \
                    sorted(rng.choice(active, size=s.cohort, replace=False).tolist())
                lagging = [i for i in active if nodes[i].coord.round != r]
                for i in lagging:
                    log(f"round {r}: node {i} is at round {nodes[i].coord.round} (no head "
                        "heard); it sits this round out")
                cohort = [i for i in cohort if i not in lagging]
                mp = len(cohort) - 1 if s.min_peers == -1 else min(s.min_peers, len(cohort) - 1)
                trained, norms = {}, {}
                sigma = member_noise(s, mp + 1)
                if s.secure_aggregation and s.dp_noise:   # as node/runtime.secure_min_sum
                    for i in cohort:
                        nodes[i].coord.secure_min_sum = threshold(mp + 1)
                for i in cohort:
                    trained[i] = learners.train(i, nodes[i].coord.adapter, s.local_steps)
                    if accountants is not None:
                        noised, norms[i] = clip_and_noise(trained[i][0], s.dp_clip, sigma,
                                                          dp_rng)
                        trained[i] = (noised, *trained[i][1:])
                        accountants[i].step()
                results, sent0, recv0 = {}, {}, {}
                for i in active:
                    t = nodes[i].coord.transport
                    sent0[i], recv0[i] = t.bytes_sent, t.bytes_received
                t0 = trio.current_time()

                async def one(i: int):
                    c = nodes[i].coord
                    c.min_peers = max(0, mp)
                    try:
                        if i in trained:
                            delta, tokens, _ = trained[i]
                            results[i] = await c.exchange(r, delta, tokens)
                        else:
                            results[i] = await c.follow(r)
                    except SwarmMovedOn:
                        results[i] = None
                    except RoundAbandoned as e:     # secure aggregation: nothing revealed
                        log(f"node {i}: {e}")
                        results[i] = None
                    results[i, "t"] = trio.current_time() - t0

                async def crash(i: int):
                    await trio.sleep(0.0005)    # after its manifest is out, before any fetch
                    stop(i)

                async with trio.open_nursery() as rn:
                    for i in active:
                        rn.start_soon(one, i)
                    for i in sorted(ev["crash"]):
                        rn.start_soon(crash, i)
                survivors = [i for i in active if i in online]
                shas = Counter(nodes[i].coord.adapter_sha256 for i in survivors)
                major_sha = shas.most_common(1)[0][0]
                major = next(nodes[i].coord.adapter for i in survivors
                             if nodes[i].coord.adapter_sha256 == major_sha)
                held = learners.evaluate(major)
                for i in range(s.nodes):
                    state = ("crashed" if i in ev["crash"] else "left" if i in ev["leave"]
                             else "away" if i not in active else
                             "joined" if i in joined else "active")
                    row = {"round": r, "node": i, "state": state}
                    if i in active:
                        c, res = nodes[i].coord, results.get(i)
                        div = 0.0 if i not in online else math.sqrt(sum(
                            float(np.sum((c.adapter[k].astype(np.float64) - major[k]) ** 2))
                            for k in major))
                        row.update(
                            trained=i in trained, included=bool(res and res.included),
                            contributors=len(res.contributors) if res else 0,
                            adapter_sha256=c.adapter_sha256 if i in online else "",
                            bytes_sent=c.transport.bytes_sent - sent0[i],
                            bytes_received=c.transport.bytes_received - recv0[i],
                            round_s=results.get((i, "t"), float("nan")),
                            train_loss=trained[i][2] if i in trained else None,
                            divergence=div)
                    rows.append(row)
                per_round.append({
                    "round": r, "heldout_loss": held, "active": len(active),
                    "cohort": len(cohort), "adapters_identical": len(shas) == 1,
                    "tokens": sum(trained[i][1] for i in trained),
                    "round_s": max((results.get((i, "t"), 0.0) for i in active), default=0.0),
                    "bytes_sent_cum": sent_total(nodes, online),
                    **({"dp_epsilon": _finite(max(a.epsilon(s.dp_delta) for a in accountants
                                                  if a.releases)),
                        # L2 norm of the updates before clipping: what dp_clip is chosen from
                        "update_norm_median": float(np.median(list(norms.values())))
                        if norms else None} if accountants else {})})
                log(f"round {r}: {len(active)} active, cohort {len(cohort)}, held-out loss "
                    f"{held:.4f}, {'identical adapters' if len(shas) == 1 else f'{len(shas)} adapters'}"
                    f", {time.monotonic() - t_wall:.0f} s")
            nursery.cancel_scope.cancel()
        return net, nodes

    net, nodes = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return {"rows": rows, "rounds": per_round, "initial_loss": initial_loss,
            "bytes_sent_total": sent_total(nodes, {n.index for n in nodes if n.coord and n.coord.peer_id in net.nodes}),
            "payload_bytes": net.payload_bytes, "payload_transfers": net.payload_transfers,
            "values_per_update": n_values, "wall_s": time.monotonic() - t_wall}
