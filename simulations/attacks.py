"""Attacks x aggregation rules: a swarm of honest nodes that really train (the default model,
NumPy backend, each on its own BBC topic) plus attackers that speak protocol v2 correctly, for
every rule, in one process on virtual time: the real RoundCoordinator, wire format, codecs,
round records and rules over memory_net's in-memory transport (training is real, the network
is simulated). Prints and writes the matrix of the honest nodes' final held-out loss relative
to the honest-only swarm with the same rule.

    python -m bitswarm.simulations.attacks --honest 4 --attackers 1 --rounds 3 --out runs/attacks

Attacks (each attacker trains honestly on its own data, then sends instead, claiming 10^9
tokens): sign-flip (-10 x its delta), scaled (10^6 x its delta), noise (Gaussian noise of 100x
its delta's norm), constant (one fixed direction of 100x its delta's norm, the same for all
attackers: colluding).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio
import trio.testing

from bitswarm.federation.aggregation import AGGREGATION_RULES
from bitswarm.federation.rounds import RoundCoordinator
from bitswarm.kernels.backend import select_backend
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import init_lora, lora_shapes
from bitswarm.kernels.model import BitNetModel
from bitswarm.node.data import TrainSampler, find_text_files, tokenize
from bitswarm.node.default_model import ensure_default_model
from bitswarm.node.evaluate import evaluate
from bitswarm.node.models import load_model
from bitswarm.node.trainer import LocalTrainer
from bitswarm.simulations.local_swarm import prepare_documents
from bitswarm.simulations.memory_net import MemoryNetwork

ATTACKS = ("none", "sign-flip", "scaled", "noise", "constant")
CLAIMED_TOKENS = 10**9


async def _inline(fn):
    return fn()


def attack_delta(kind: str, delta: dict, rng: np.random.Generator, direction: dict) -> dict:
    """The attacker's update for `kind` from its honestly trained `delta` (see module doc)."""
    norm = float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values())))
    if kind == "sign-flip":
        return {k: -10 * v for k, v in delta.items()}
    if kind == "scaled":
        return {k: 1e6 * v for k, v in delta.items()}
    if kind in ("noise", "constant"):
        src = ({k: rng.standard_normal(v.shape) for k, v in delta.items()} if kind == "noise"
               else direction)
        n = float(np.sqrt(sum(float(np.sum(v ** 2)) for v in src.values())))
        return {k: (v * (100 * norm / n)).astype(np.float32) for k, v in src.items()}
    raise ValueError(f"unknown attack {kind!r}")


def run_one(rule: str, attack: str, *, honest: int, attackers: int, rounds: int, steps: int,
            docs: list[Path], eval_docs, weights, tokenizer, seed: int = 0) -> dict:
    """One swarm: returns the honest nodes' final held-out loss and whether they agreed."""
    lora = LoRAConfig()
    backend = select_backend("cpu", "gpu")
    model = BitNetModel(weights, backend, lora)
    shapes = lora_shapes(weights.config, lora)
    n = honest + (attackers if attack != "none" else 0)
    trainers = []
    for i in range(n):
        sampler = TrainSampler([tokenize(tokenizer, f) for f in find_text_files(docs[i])], 64,
                               seed=seed + i)
        trainers.append(LocalTrainer(model, sampler, lr=2e-3, batch_size=4))
    g0 = init_lora(weights.config, lora, seed)
    rng = np.random.default_rng(seed)
    direction = {k: rng.standard_normal(s) for k, s in shapes.items()}

    async def main():
        net = MemoryNetwork()
        coords = []
        for _ in range(n):
            t, kp = net.add()
            coords.append(RoundCoordinator(
                t, kp, swarm="attacks", base_model="ab" * 32, lora=lora, expected_shapes=shapes,
                initial_adapter=g0, min_peers=n - 1, round_timeout_s=60.0,
                aggregation=AGGREGATION_RULES[rule](), run_blocking=_inline))
        async with trio.open_nursery() as nursery:
            for c in coords:
                await nursery.start(c.run)
            for rnd in range(rounds):
                updates = []
                for i, (c, tr) in enumerate(zip(coords, trainers)):
                    tr.set_adapter(c.adapter)
                    try:
                        tokens = sum(tr.step()[1] for _ in range(steps))
                    except FloatingPointError:          # the rule let the attack through
                        nursery.cancel_scope.cancel()
                        return None
                    delta = {k: tr.adapter()[k] - c.adapter[k] for k in shapes}
                    if i >= honest:
                        delta, tokens = attack_delta(attack, delta, rng, direction), CLAIMED_TOKENS
                    updates.append((delta, tokens))
                async with trio.open_nursery() as inner:
                    for c, (delta, tokens) in zip(coords, updates):
                        inner.start_soon(c.exchange, rnd, delta, tokens)
            nursery.cancel_scope.cancel()
        return coords

    coords = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    if coords is None:
        return {"rule": rule, "attack": attack, "heldout_loss": None, "honest_agree": True,
                "diverged": True}
    shas = {c.adapter_sha256 for c in coords[:honest]}
    model.set_lora(coords[0].adapter)
    held = evaluate(model, eval_docs, 64)["loss"]
    return {"rule": rule, "attack": attack, "heldout_loss": held if np.isfinite(held) else None,
            "honest_agree": len(shas) == 1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--honest", type=int, default=4)
    ap.add_argument("--attackers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--rules", default=",".join(sorted(AGGREGATION_RULES)))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--files-per-node", type=int, default=12)
    ap.add_argument("--eval-files", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/attacks"))
    a = ap.parse_args(argv)
    rules, attacks = a.rules.split(","), a.attacks.split(",")
    for r in rules:
        if r not in AGGREGATION_RULES:
            ap.error(f"--rules: unknown rule {r!r}; choose from {sorted(AGGREGATION_RULES)}")
    for x in attacks:
        if x not in ATTACKS:
            ap.error(f"--attacks: unknown attack {x!r}; choose from {ATTACKS}")
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = ensure_default_model(Path(tmp) / "default-model")
        loaded = load_model(model_dir)
        docs = prepare_documents(Path(tmp), a.honest + a.attackers, a.files_per_node,
                                 topic="business", eval_files=a.eval_files)
        eval_docs = [tokenize(loaded.tokenizer, f) for f in find_text_files(Path(tmp) / "eval")]
        results, t0 = [], time.monotonic()
        for rule in rules:
            for attack in ["none", *[x for x in attacks if x != "none"]]:
                r = run_one(rule, attack, honest=a.honest, attackers=a.attackers, rounds=a.rounds,
                            steps=a.local_steps, docs=docs, eval_docs=eval_docs,
                            weights=loaded.weights, tokenizer=loaded.tokenizer)
                results.append(r)
                print(json.dumps(r), flush=True)
    base = {r["rule"]: r["heldout_loss"] for r in results if r["attack"] == "none"}
    cols = [x for x in ["none", *attacks] if x != "none" or "none" in attacks] or ["none"]
    lines = ["| rule | honest-only loss | " + " | ".join(c for c in cols if c != "none") + " |",
             "|---|---:|" + "---:|" * len([c for c in cols if c != "none"])]
    for rule in rules:
        cells = []
        for c in cols:
            if c == "none":
                continue
            r = next(x for x in results if x["rule"] == rule and x["attack"] == c)
            if r["heldout_loss"] is None:
                cells.append("diverged (NaN loss)")
            else:
                rel = r["heldout_loss"] / base[rule] - 1
                cells.append(f"{r['heldout_loss']:.3f} ({rel:+.1%}){'' if r['honest_agree'] else ' split'}")
        lines.append(f"| {rule} | {base[rule]:.3f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    (a.out / "matrix.md").write_text(table + "\n")
    (a.out / "results.json").write_text(json.dumps({"args": vars(a) | {"out": str(a.out)},
                                                    "wall_s": time.monotonic() - t0,
                                                    "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
