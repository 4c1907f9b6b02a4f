"""`node start`'s training loop against the benchmark step, same device, same run.

The node loop is what node/runtime.py's round runs, in the same order, on the node's own
objects: the embedded default model loaded as `node start` loads it (node/models.py), real
documents tokenized and sampled by node/data.py, `LocalTrainer.set_adapter`, `local_steps` x
`LocalTrainer.step`, then `LocalTrainer.adapter()` (the readback the delta is made from):
tokens / train_s as rounds.jsonl reports it. What is left out is the network and trio (the
runtime calls these through trio.to_thread with a limiter of 1; its tasks idle while a lone
node trains), so py-libp2p need not be installed (the GPU machine has no wheel of py-libp2p
0.8.1's pinned fastecdsa 2.3.2 for Python 3.12).

The benchmark step is benchmarks/train_step.py's (random weights of the same shape, random
ids, LoRA r8 q/k/v/o, AdamW), at the same batch, in its own model on the same device. Rounds
and benchmark blocks of as many steps alternate; the ratio reported is the median over those
pairs.

    python benchmarks/node_loop.py [--device gpu|cpu] [--batch 8] [--rounds 3] [--local-steps 10]
                                   [--data DIR] [--model shape name of benchmarks/shapes.py]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))   # sibling modules
import train_step  # noqa: E402
from common import machine_info, out_path, parser, write_json  # noqa: E402
from shapes import CONFIGS  # noqa: E402


def node_loop(be, data: Path, batch: int, ctx: int, steps: int, shape: str | None):
    """(round, config): round() runs one round of the node's own loop and returns (tokens /
    train_s, phase times in ms; `adapter` ends with the GPU's wait for the round's work)."""
    from bitswarm.kernels.config import LoRAConfig
    from bitswarm.kernels.lora import init_lora
    from bitswarm.kernels.model import BitNetModel
    from bitswarm.node.data import TrainSampler, find_text_files, split_train_heldout, tokenize
    from bitswarm.node.models import load_model
    from bitswarm.node.trainer import LocalTrainer
    loaded = load_model(None)                          # the embedded default, as node start
    weights = loaded.weights
    if shape is not None:                              # another shape: random weights of it
        weights = train_step.fast_weights(CONFIGS[shape], 0)
    lcfg = LoRAConfig(rank=train_step.RANK, alpha=train_step.ALPHA,
                      target_modules=train_step.TARGETS["qkvo"])
    model = BitNetModel(weights, be, lcfg)
    train, _ = split_train_heldout(find_text_files(data))
    docs = [tokenize(loaded.tokenizer, f) for f in train]
    if shape is not None:                              # keep ids inside the shape's vocab
        V = weights.config.vocab_size
        for d in docs:
            d.ids = np.asarray(d.ids) % V
    sampler = TrainSampler(docs, ctx, seed=0)
    trainer = LocalTrainer(model, sampler, lr=1e-3, batch_size=batch)
    state = init_lora(weights.config, lcfg, 0)

    def one_round() -> tuple[float, dict]:
        nonlocal state
        t0 = time.monotonic()
        trainer.set_adapter(state)
        t1 = time.monotonic()
        tokens = 0
        for _ in range(steps):
            _, count = trainer.step()
            tokens += count
        t2 = time.monotonic()
        state = trainer.adapter()
        t3 = time.monotonic()
        return tokens / (t3 - t0), {"set_adapter_ms": (t1 - t0) * 1e3,
                                    "steps_ms": (t2 - t1) * 1e3, "adapter_ms": (t3 - t2) * 1e3}
    return one_round, weights.config


def bench_block(step_fn, steps: int) -> float:
    """tokens/s of `steps` benchmark steps in a row."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return train_step.B * train_step.T * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = parser("node_loop", __doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--data", type=Path, default=HERE.parent / "docs",
                    help="folder of text files (default: the repository's docs/)")
    ap.add_argument("--model", default=None,
                    help="a benchmarks/shapes.py shape instead of the default model")
    args = ap.parse_args()
    from bitswarm.kernels.backend import select_backend
    be = select_backend(args.device)
    ctx = getattr(be, "ctx", None)
    info = machine_info(ctx) if ctx is not None else machine_info()
    print(f"device: {be.device_info}")
    one_round, cfg = node_loop(be, args.data, args.batch, args.ctx, args.local_steps,
                               args.model)
    train_step.B, train_step.T = args.batch, args.ctx
    _, bench_step = train_step.setup_ours(be, cfg, "qkvo")
    one_round()                                        # compiles: dropped
    bench_block(bench_step, 2)
    # Interleaved, a node round then a block of as many benchmark steps: the machine's drift
    # (clocks, a shared host's load: node rounds alone ranged 25-40k tok/s within one call on
    # the H200) hits both sides of each pair alike.
    rates, phases, benches = [], [], []
    for _ in range(args.rounds):
        rate, ph = one_round()
        rates.append(rate)
        phases.append(ph)
        benches.append(bench_block(bench_step, args.local_steps))
    pairs = [n / b for n, b in zip(rates, benches)]
    node, bench = statistics.median(rates), statistics.median(benches)
    res = {"benchmark": "node_loop", "machine": info, "device": be.device_info,
           "model": args.model or "default", "batch": args.batch, "ctx": args.ctx,
           "local_steps": args.local_steps, "node_tokens_per_s_rounds": rates,
           "node_round_phases": phases, "bench_tokens_per_s_blocks": benches,
           "node_over_bench_pairs": pairs, "node_tokens_per_s": node,
           "bench_tokens_per_s": bench, "node_over_bench": statistics.median(pairs)}
    print(f"{res['model']} batch {args.batch} x {args.ctx}: node loop "
          f"{' / '.join(f'{r:.0f}' for r in rates)} tok/s (median {node:.0f}); benchmark step "
          f"{' / '.join(f'{r:.0f}' for r in benches)} tok/s (median {bench:.0f}); node / "
          f"benchmark per pair {' / '.join(f'{r:.3f}' for r in pairs)} (median "
          f"{res['node_over_bench']:.3f})")
    for p in phases:
        print("  round phases (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in p.items()))
    write_json(out_path("node_loop", args.out), res)


if __name__ == "__main__":
    main()
