"""Secure aggregation's overhead against plain FedAvg, measured in the same run: N in-process
RoundCoordinators over simulations.memory_net on trio's MockClock (the virtual engine), one
LoRA of 4 layers x (q, k, v, o) x rank 8 x hidden 256 (65536 float32 values, 256 KiB).

Per round and node it reports: bytes sent (gossip + payloads, MemoryTransport counters),
virtual seconds (links of 10 ms one way and 100 Mbit/s per transfer: the protocol's waits
and transfers, not CPU) and CPU seconds (wall time of the whole in-process round divided by
N: every node's masking, unmasking, encoding and hashing, run inline one after another).
Baselines: plain fedavg with the lossless raw-zstd/1 codec (4 bytes a value, like a masked
input) and with the default int8-block-zstd/1.

    .venv/bin/python benchmarks/secagg_overhead.py [--nodes 3 8 16] [--rounds 2]
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
import trio
import trio.testing

from bitswarm.federation.aggregation import FedAvg
from bitswarm.federation.codecs import Int8BlockCodec, RawCodec
from bitswarm.federation.rounds import RoundCoordinator
from bitswarm.kernels.config import LoRAConfig
from bitswarm.simulations.memory_net import MemoryNetwork

BASE = hashlib.sha256(b"bench base").hexdigest()
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA = LoRAConfig(rank=8, alpha=16.0, target_modules=MODULES)
SHAPES = {f"layers.{i}.{m}.lora_{ab}": ((8, 256) if ab == "A" else (256, 8))
          for i in range(4) for m in MODULES for ab in "AB"}


async def _inline(fn):
    return fn()


def _delta(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in SHAPES.items()}
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values()))
    return {k: v * np.float32(min(1.0, 0.5 / norm)) for k, v in d.items()}


def measure(n: int, rounds: int, mode: str) -> tuple[float, float, float]:
    """(bytes sent per node per round, virtual s per round, CPU s per node per round)."""
    out = {}

    async def main():
        net = MemoryNetwork(latency_s=0.010, bandwidth_Bps=12.5e6, record_published=False,
                            buffer=4096)
        coords = []
        for _ in range(n):
            t, kp = net.add()
            kw = dict(swarm=f"bench-{mode}", base_model=BASE, lora=LORA, expected_shapes=SHAPES,
                      min_peers=n - 1, round_timeout_s=120.0, fetch_timeout_s=30.0,
                      republish_interval_s=2.0, run_blocking=_inline, aggregation=FedAvg())
            if mode == "secagg":
                kw.update(dp=(1.0, 0.0), secure_aggregation=True)
            else:
                kw.update(codec=RawCodec() if mode == "raw" else Int8BlockCodec())
            coords.append(RoundCoordinator(t, kp, **kw))
        async with trio.open_nursery() as nursery:
            for c in coords:
                await nursery.start(c.run)
            sent0 = sum(c.transport.bytes_sent for c in coords)
            v0, w0 = trio.current_time(), time.perf_counter()
            for rnd in range(rounds):
                async with trio.open_nursery() as m:
                    for i, c in enumerate(coords):
                        m.start_soon(c.exchange, rnd, _delta(100 * rnd + i), 100 + i)
            out["v"] = (trio.current_time() - v0) / rounds
            out["w"] = (time.perf_counter() - w0) / rounds / n
            out["b"] = (sum(c.transport.bytes_sent for c in coords) - sent0) / rounds / n
            assert len({c.adapter_sha256 for c in coords}) == 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out["b"], out["v"], out["w"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 8, 16])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    print(f"adapter: {sum(int(np.prod(s)) for s in SHAPES.values())} values; {a.rounds} rounds")
    print(f"{'nodes':>5} {'mode':>8} {'KiB sent/node':>14} {'virtual s':>10} {'CPU s/node':>11}"
          f" {'bytes x raw':>12} {'bytes x int8':>13} {'virt x raw':>11} {'CPU x raw':>10}")
    for n in a.nodes:
        res = {m: measure(n, a.rounds, m) for m in ("int8", "raw", "secagg")}
        for m, (b, v, w) in res.items():
            rb, rv, rw = res["raw"]
            print(f"{n:>5} {m:>8} {b / 1024:>14.1f} {v:>10.3f} {w:>11.3f} {b / rb:>12.2f} "
                  f"{b / res['int8'][0]:>13.2f} {v / rv:>11.2f} {w / rw:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
