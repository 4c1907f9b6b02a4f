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
ids, LoRA r8 q/k/v/o, AdamW), at the same batch.

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


def node_rounds(be, data: Path, batch: int, ctx: int, rounds: int, steps: int,
                shape: str | None) -> tuple[list[float], object]:
    """tokens / train_s of each round of the node's own loop; the model config used."""
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
    rates = []
    for _ in range(rounds + 1):                        # round 0 compiles: dropped
        t0 = time.monotonic()
        trainer.set_adapter(state)
        tokens = 0
        for _ in range(steps):
            _, count = trainer.step()
            tokens += count
        local = trainer.adapter()
        rates.append(tokens / (time.monotonic() - t0))
        state = local
    return rates[1:], weights.config


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
    rates, cfg = node_rounds(be, args.data, args.batch, args.ctx, args.rounds,
                             args.local_steps, args.model)
    train_step.B, train_step.T = args.batch, args.ctx
    bench = train_step.run_ours(be, cfg, "qkvo", max(3, args.local_steps // 2), 2)
    node = statistics.median(rates)
    res = {"benchmark": "node_loop", "machine": info, "device": be.device_info,
           "model": args.model or "default", "batch": args.batch, "ctx": args.ctx,
           "local_steps": args.local_steps, "node_tokens_per_s_rounds": rates,
           "node_tokens_per_s": node, "bench_tokens_per_s": bench["tokens_per_s"],
           "node_over_bench": node / bench["tokens_per_s"]}
    print(f"{res['model']} batch {args.batch} x {args.ctx}: node loop "
          f"{' / '.join(f'{r:.0f}' for r in rates)} tok/s (median {node:.0f}); benchmark step "
          f"{bench['tokens_per_s']:.0f} tok/s; node / benchmark {res['node_over_bench']:.3f}")
    write_json(out_path("node_loop", args.out), res)


if __name__ == "__main__":
    main()
