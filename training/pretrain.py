"""Pretrain the default BitNet b1.58 from scratch with bitswarm's own engine (training/engine.py):
latent fp32 weights, absmean ternary + absmax int8 quantization-aware training, AdamW with
linear warmup and cosine decay, on the corpus of training/prepare_corpus.py.

    python training/prepare_corpus.py --out build/corpus
    python training/pretrain.py --config training/default_model.json --corpus build/corpus \
        --out build/default_model [--device auto|gpu|cpu] [--max-seconds S] [--steps N]

Reproducible: the parameter init and the window sampler are seeded from the config. With
--max-seconds the run times its first steps and then fixes the total step count (and so the
cosine schedule) to what fits the budget; the count chosen is logged.

Output in --out: log.jsonl (one line per step: loss, lr, tokens, seconds; eval lines with the
held-out loss), model/ (packed `bitnet` checkpoint + tokenizer.json, loadable by
formats/hf_checkpoint.load_bitnet and `node eval`), summary.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from bitswarm.kernels.backend import select_backend
from bitswarm.formats.hf_checkpoint import save_bitnet
from bitswarm.kernels.config import BitNetConfig, LoRAConfig
from bitswarm.training.engine import (PretrainModel, PRETRAIN_ADAMW, PretrainOptimizer,
                                       count_params, init_latent, to_weights)


def load_config(path: Path) -> tuple[BitNetConfig, dict]:
    raw = json.loads(Path(path).read_text())
    try:
        return BitNetConfig(**raw["model"]), dict(raw["train"])
    except (KeyError, TypeError) as e:
        raise SystemExit(f"{path}: bad config ({e})") from None


class WindowSampler:
    """Random (ctx+1)-token windows of one token stream (documents joined <|bos|> doc <|eos|>)."""

    def __init__(self, tokens: np.ndarray, ctx: int, seed: int) -> None:
        if tokens.size < ctx + 2:
            raise ValueError(f"token stream of {tokens.size} tokens is shorter than ctx+2")
        self.tokens, self.ctx = tokens.astype(np.int32), ctx
        self.rng = np.random.default_rng(seed)

    def batch(self, B: int) -> tuple[np.ndarray, np.ndarray]:
        starts = self.rng.integers(0, self.tokens.size - self.ctx - 1, B)
        w = np.stack([self.tokens[s:s + self.ctx + 1] for s in starts])
        return w[:, :-1], w[:, 1:]


def lr_at(step: int, total: int, t: dict) -> float:
    """Linear warmup to lr over warmup_steps, cosine to lr*min_lr_fraction at `total`."""
    lr, warm = t["lr"], t["warmup_steps"]
    if step <= warm:
        return lr * step / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    lo = lr * t["min_lr_fraction"]
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * p))


def heldout_loss(model: PretrainModel, windows: np.ndarray, B: int) -> float:
    """Mean next-token loss (nats) over fixed held-out windows (n, ctx+1)."""
    tot, cnt = 0.0, 0
    for s in range(0, len(windows), B):
        w = windows[s:s + B]
        nats, n = model.loss(w[:, :-1], w[:, 1:])
        tot, cnt = tot + nats, cnt + n
    return tot / cnt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pretrain the default BitNet b1.58")
    ap.add_argument("--config", type=Path, default=Path(__file__).with_name("default_model.json"))
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    ap.add_argument("--out", type=Path, default=Path("build/default_model"))
    ap.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="wall-clock budget for the training loop (export and eval come after)")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--max-train-tokens", type=int, default=None,
                    help="train on the first N tokens of train.bin only (its documents are in a "
                         "fixed shuffled order, so a prefix is a random subset of documents)")
    ap.add_argument("--full-eval", action="store_true",
                    help="also run the README eval protocol on corpus/heldout/*.txt at the end")
    args = ap.parse_args(argv)

    cfg, t = load_config(args.config)
    total = int(args.steps or t["steps"])
    B, T = int(t["batch_size"]), int(t["ctx"])
    tok_json = (args.corpus / "tokenizer.json").read_text(encoding="utf-8")
    train = np.fromfile(args.corpus / "train.bin", dtype=np.uint16,
                        count=args.max_train_tokens or -1)
    held = np.fromfile(args.corpus / "heldout.bin", dtype=np.uint16).astype(np.int32)
    if int(train.max()) >= cfg.vocab_size:
        raise SystemExit(f"corpus token id {int(train.max())} >= vocab_size {cfg.vocab_size}")
    ectx = int(t["eval_ctx"])
    n_ev = min(int(t["eval_windows"]), held.size // (ectx + 1))
    ev_windows = np.stack([held[i * (ectx + 1):(i + 1) * (ectx + 1)] for i in range(n_ev)])

    be = select_backend(args.device)
    dev_name = getattr(getattr(be, "ctx", None), "info", {}).get("device", "cpu (NumPy)")
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.jsonl", "w")

    def emit(rec: dict) -> None:
        log.write(json.dumps(rec) + "\n")
        log.flush()

    n_params = count_params(cfg)
    print(f"model: {n_params / 1e6:.2f}M params, backend {be.name} ({dev_name}); corpus "
          f"{train.size} train tokens; batch {B}x{T}", flush=True)
    model = PretrainModel(cfg, init_latent(cfg, int(t["seed"]), float(t["init_std"])), be)
    opt = PretrainOptimizer(model, dataclasses.replace(
        PRETRAIN_ADAMW, lr=t["lr"], beta1=t["beta1"], beta2=t["beta2"],
        weight_decay=t["weight_decay"]))
    sampler = WindowSampler(train, T, int(t["seed"]) + 1)

    t0 = time.perf_counter()
    step, tokens, losses = 0, 0, []
    timed_from = None
    while step < total:
        step += 1
        ids, tgt = sampler.batch(B)
        lr = lr_at(step, total, t)
        rows, count, grads = model.loss_and_full_grads(ids, tgt)
        opt.step(grads, lr)                             # ends with a readback: step is done
        loss = float(np.sum(be.numpy(rows), dtype=np.float64)) / count
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss {loss} at step {step}")
        tokens += count
        losses.append(loss)
        el = time.perf_counter() - t0
        emit({"step": step, "loss": loss, "lr": lr, "tokens": tokens, "seconds": round(el, 3)})
        if step == 3:
            timed_from = el
        if args.max_seconds and step == 8 and timed_from is not None:
            per = (el - timed_from) / 5
            fit = step + int((args.max_seconds - el) / per)
            if fit < total:
                total = max(step + 1, fit)
            print(f"{per:.3f} s/step ({B * T / per:.0f} tokens/s): training {total} steps",
                  flush=True)
            emit({"planned_steps": total, "seconds_per_step": per})
        if step % int(t["eval_every"]) == 0 or step == total:
            ev = heldout_loss(model, ev_windows, B)
            emit({"step": step, "heldout_loss": ev, "tokens": tokens, "seconds": round(el, 3)})
            print(f"step {step}/{total} loss {np.mean(losses[-20:]):.4f} heldout {ev:.4f} "
                  f"lr {lr:.2e} tokens {tokens} {el:.0f}s", flush=True)
    train_s = time.perf_counter() - t0

    latent = model.latent_numpy()
    save_bitnet(to_weights(cfg, latent), args.out / "model", tokenizer_json=tok_json)
    summary = {"params": n_params, "steps": step, "tokens_seen": tokens, "train_seconds": train_s,
               "train_tokens_available": int(train.size),
               "device": dev_name, "backend": be.name, "final_train_loss": float(np.mean(losses[-20:])),
               "heldout_loss_windows": heldout_loss(model, ev_windows, B), "config": str(args.config)}
    if args.full_eval and (args.corpus / "heldout").is_dir():
        from bitswarm.formats.hf_checkpoint import load_bitnet
        from bitswarm.kernels.model import BitNetModel
        from bitswarm.formats.tokenizer import load_tokenizer
        from bitswarm.node.data import find_text_files, tokenize
        from bitswarm.node.evaluate import evaluate
        m = BitNetModel(load_bitnet(args.out / "model"), be, LoRAConfig(target_modules=("q_proj",)))
        m.set_lora({})
        tk = load_tokenizer(args.out / "model")
        docs = [tokenize(tk, f) for f in find_text_files(args.corpus / "heldout")]
        summary["node_eval_ctx128"] = evaluate(m, docs, 128)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
