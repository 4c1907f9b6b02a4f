"""Agreement within rounds on a loaded swarm: how many nodes adopt a round's minority adapter.

N RoundCoordinators (the real round protocol: signed manifests, records, codecs, FedAvg,
catch-up) on simulations/memory_net.py with virtual time, as on a mesh of CPU-starved
processes: every gossip delivery takes a delay drawn from --delay LO HI seconds times the
receiver's slowness (uniform 1-4, fixed per node), every blocking step (aggregating,
recomputing a record) --compute seconds times it, and each node's training takes 9-30 s. Each
node runs node start's loop (node/runtime.py): catch_up, train, exchange; SwarmMovedOn means
catch up next. Printed per round: how many adoptions landed on each adapter; then the
adoptions off their round's majority adapter, the catch-ups, the final adapters and the
virtual seconds the rounds took. Training is not run (fixed random deltas): this measures the
protocol only.

    python benchmarks/agreement_under_load.py [--nodes 32] [--quorum 20] [--rounds 5]
        [--delay 0.5 10] [--compute 2] [--seed 0]

To compare two versions of the protocol, run the script under each checkout (peer IDs are
fresh every run, so seeds do not pair runs exactly: compare several seeds).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import random
import time
from collections import Counter, defaultdict

import numpy as np
import trio
import trio.testing

from bitswarm.federation.rounds import RoundCoordinator, SwarmMovedOn
from bitswarm.kernels.config import LoRAConfig
from bitswarm.simulations.memory_net import MemoryNetwork

SHAPES = {f"layers.{i}.{m}.lora_{ab}": ((4, 32) if ab == "A" else (32, 4))
          for i in range(2) for m in ("q_proj", "v_proj") for ab in "AB"}


def delta_for(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in SHAPES.items()}


async def run(args) -> dict:
    net = MemoryNetwork(gossip_delay_s=tuple(args.delay), seed=args.seed, buffer=4096,
                        record_published=False)
    rng = random.Random(args.seed)
    coords = []
    for _ in range(args.nodes):
        slowness = rng.uniform(1, 4)

        async def starved(fn, f=slowness):
            await trio.sleep(args.compute * f)
            return fn()
        transport, kp = net.add()
        transport.delay_factor = slowness
        coords.append(RoundCoordinator(
            transport, kp, swarm="load", base_model=hashlib.sha256(b"base").hexdigest(),
            lora=LoRAConfig(rank=4, alpha=8.0), expected_shapes=SHAPES, min_peers=args.quorum,
            round_timeout_s=900.0, fetch_timeout_s=5.0, republish_interval_s=2.0,
            run_blocking=starved))
    adopted: dict[int, Counter] = defaultdict(Counter)
    syncs = moved = 0

    async def node(i: int, c: RoundCoordinator) -> None:
        nonlocal syncs, moved
        while True:
            syncs += await c.catch_up() is not None
            rnd = c.round
            if rnd >= args.rounds:
                return
            await trio.sleep(rng.uniform(9.0, 30.0))
            try:
                res = await c.exchange(rnd, delta_for(1000 * rnd + i), 100)
                adopted[rnd][res.adapter_sha256[:12]] += 1
            except SwarmMovedOn:
                moved += 1

    async with trio.open_nursery() as nursery:
        for c in coords:
            await nursery.start(c.run)
        async with trio.open_nursery() as inner:
            for i, c in enumerate(coords):
                inner.start_soon(node, i, c)
        rounds_s = trio.current_time()
        for _ in range(10):                           # stragglers on a minority side re-sync
            await trio.sleep(30)
            for c in coords:
                syncs += await c.catch_up() is not None
        nursery.cancel_scope.cancel()
    off = [sum(v.values()) - max(v.values()) for _, v in sorted(adopted.items())]
    return {"per_round": {r: dict(v) for r, v in sorted(adopted.items())}, "off_majority": off,
            "catch_ups": syncs, "moved_on": moved, "rounds_virtual_s": rounds_s,
            "final": dict(Counter(c.adapter_sha256[:12] for c in coords))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--quorum", type=int, default=20, help="min_peers of every node")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--delay", type=float, nargs=2, default=(0.5, 10.0), metavar=("LO", "HI"))
    p.add_argument("--compute", type=float, default=2.0, help="seconds per blocking step x1")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    t0 = time.perf_counter()
    out = trio.run(run, args, clock=trio.testing.MockClock(autojump_threshold=0))
    for r, v in out["per_round"].items():
        print(f"round {r}: {v}")
    print(f"off-majority adoptions per round {out['off_majority']} (total "
          f"{sum(out['off_majority'])}), catch-ups {out['catch_ups']}, moved on "
          f"{out['moved_on']}, rounds took {out['rounds_virtual_s']:.0f} virtual s, final "
          f"adapters {out['final']}; {time.perf_counter() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
