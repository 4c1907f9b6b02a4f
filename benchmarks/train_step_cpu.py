"""LoRA training step on the CPU: our NumPy backend against PyTorch + transformers + PEFT, same
cores, same run.

Ours: kernels/model.py BitNetModel.loss_and_grads + kernels/optim.py AdamW on CpuBackend
(NumPy, float32). Baseline: transformers BitNetForCausalLM with online quantization
(`AutoBitLinear`, float32, weights and activations quantized every forward) + PEFT LoRA +
torch.optim.AdamW on the CPU. Both: LoRA rank 8, alpha 16, q/k/v/o (or all seven projections),
lr 1e-4, batch B x ctx 128, random weights of the model's shape (speed does not depend on the
values), one fixed batch of random token ids.

Each system runs in its own process (ours in this interpreter, torch in --torch-python, a venv
holding torch, transformers and peft: benchmark-only extras, never runtime dependencies), and
the two alternate `--repeats` times so that load from other processes on a shared machine
falls on both; every repeat reports its median step (after warm-up steps) and the ratio of the
pair, and the summary is the median over repeats.

    python benchmarks/train_step_cpu.py [--models default,125m] [--batch 8[,16]]
        [--targets qkvo|all] [--repeats 3] [--steps 3] [--warmup 2]
        [--torch-python .venv-bench/bin/python] [--no-torch] [--out FILE]

Set-up of the baseline venv (CPU wheels; plain PyPI when the PyTorch CPU index is unreachable):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    .venv-bench/bin/pip install transformers peft accelerate

Shapes: "default" is the shipped default model (node/default_model/config.json: D 384, I 1024,
8 layers, 6 / 2 heads of 64, vocab 4096); the others come from benchmarks/shapes.py.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIG = ROOT / "node" / "default_model" / "config.json"
RANK, ALPHA, LR = 8, 16.0, 1e-4
TARGETS = {"qkvo": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def shape(model: str) -> dict:
    """The model's dimensions as a plain dict (BitNetConfig field names); a worker gets them as
    JSON in BITSWARM_BENCH_SHAPE (the torch venv has no bitswarm)."""
    if os.environ.get("BITSWARM_BENCH_SHAPE"):
        return json.loads(os.environ["BITSWARM_BENCH_SHAPE"])
    if model == "default":
        c = json.loads(DEFAULT_CONFIG.read_text())
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "rope_theta", "max_position_embeddings", "tie_word_embeddings")
        return {k: c[k] for k in keys}
    sys.path.insert(0, str(HERE))
    from dataclasses import asdict
    from shapes import CONFIGS
    d = asdict(CONFIGS[model])
    d.pop("bos_token_id", None), d.pop("eos_token_id", None)
    return d


def token_batch(vocab: int, B: int, T: int):
    import numpy as np
    rng = np.random.default_rng(1)
    ids = rng.integers(0, vocab, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def _timed(step, steps: int, warmup: int) -> dict:
    times, losses = [], []
    for s in range(warmup + steps):
        t0 = time.perf_counter()
        losses.append(step())
        if s >= warmup:
            times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "times_s": times, "losses": losses}


def worker_ours(model: str, B: int, T: int, targets: str, steps: int, warmup: int) -> dict:
    sys.path.insert(0, str(HERE))
    from train_step import fast_weights
    from bitswarm.kernels.backend import CpuBackend
    from bitswarm.kernels.config import BitNetConfig, LoRAConfig
    from bitswarm.kernels.lora import init_lora, trainable_keys
    from bitswarm.kernels.model import BitNetModel
    from bitswarm.kernels.optim import AdamW, AdamWConfig
    cfg = BitNetConfig(**shape(model))
    lcfg = LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS[targets])
    be = CpuBackend()
    m = BitNetModel(fast_weights(cfg, 0), be, lcfg)
    state = init_lora(cfg, lcfg, 0)
    m.set_lora(state)
    keys = trainable_keys(state, lcfg)
    opt = AdamW(be, AdamWConfig(lr=LR))
    ids, tg = token_batch(cfg.vocab_size, B, T)

    def step():
        loss, _, grads = m.loss_and_grads(ids, tg)
        opt.step(m.lora, {k: grads[k] for k in keys})
        return loss
    return _timed(step, steps, warmup)


def worker_torch(model: str, B: int, T: int, targets: str, steps: int, warmup: int,
                 tmp: Path) -> dict:
    # benchmarks/kernels.py would shadow Hugging Face's optional `kernels` package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM
    s = shape(model)
    d = tmp / f"hf-cpu-{model}"
    if not (d / "config.json").exists():
        torch.manual_seed(0)
        BitNetForCausalLM(BitNetConfig(**s)).save_pretrained(d)
        cj = json.loads((d / "config.json").read_text())
        cj["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                     "quantization_mode": "online"}
        (d / "config.json").write_text(json.dumps(cj))
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    kind = type(hf.model.layers[0].self_attn.q_proj).__name__
    hf = get_peft_model(hf, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                       target_modules=list(TARGETS[targets])))
    hf.train()
    opt = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=LR)
    ids, _ = token_batch(s["vocab_size"], B, T)
    ids = torch.from_numpy(ids)

    def step():
        out = hf(input_ids=ids, labels=ids)          # transformers shifts the labels
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss)
    res = _timed(step, steps, warmup)
    res.update(q_proj_class=kind, threads=torch.get_num_threads(),
               versions={"torch": torch.__version__, "transformers": transformers.__version__})
    return res


def _run(python: str, system: str, model: str, B: int, a) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--models", model,
           "--batch", str(B), "--ctx", str(a.ctx), "--targets", a.targets, "--steps",
           str(a.steps), "--warmup", str(a.warmup), "--tmp", a.tmp]
    env = dict(os.environ, BITSWARM_BENCH_SHAPE=json.dumps(shape(model)))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout_s, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="benchmarks/train_step_cpu.py",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,125m")
    ap.add_argument("--batch", default="8", help="comma-separated batch sizes (sequences)")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--targets", default="qkvo", choices=sorted(TARGETS))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--tmp", default="/tmp/bitswarm-bench")
    ap.add_argument("--timeout-s", type=float, default=1800)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        B = int(a.batch)
        if a.worker == "ours":
            r = worker_ours(a.models, B, a.ctx, a.targets, a.steps, a.warmup)
        else:
            r = worker_torch(a.models, B, a.ctx, a.targets, a.steps, a.warmup, Path(a.tmp))
        print(json.dumps(r))
        return
    use_torch = not a.no_torch and Path(a.torch_python).exists()
    rows = []
    print(f"{'model':8s} {'batch':>5s} {'rep':>3s} {'ours tok/s':>11s} {'torch tok/s':>12s} "
          f"{'ours/torch':>10s}   load(1m)")
    for model in a.models.split(","):
        for B in map(int, a.batch.split(",")):
            tok = B * a.ctx
            reps = []
            for rep in range(a.repeats):
                r = {"ours": _run(sys.executable, "ours", model, B, a)}
                if use_torch:
                    r["torch"] = _run(a.torch_python, "torch", model, B, a)
                r["load_1m"] = os.getloadavg()[0]
                for k in ("ours", "torch"):
                    if k in r and "step_s" in r[k]:
                        r[k]["tokens_per_s"] = tok / r[k]["step_s"]
                ok = lambda k: k in r and "tokens_per_s" in r[k]  # noqa: E731
                if ok("ours") and ok("torch"):
                    r["ratio"] = r["ours"]["tokens_per_s"] / r["torch"]["tokens_per_s"]
                reps.append(r)
                fmt = lambda k: f"{r[k]['tokens_per_s']:.0f}" if ok(k) else (  # noqa: E731
                    "error" if k in r else "-")
                print(f"{model:8s} {B:5d} {rep:3d} {fmt('ours'):>11s} {fmt('torch'):>12s} "
                      f"{r.get('ratio', float('nan')):10.3f}   {r['load_1m']:.2f}", flush=True)
                for k in ("ours", "torch"):
                    if k in r and "error" in r[k]:
                        print(f"  {k} failed: {r[k]['error'][-600:]}", file=sys.stderr)
            med = lambda k: statistics.median(  # noqa: E731
                [x[k]["tokens_per_s"] for x in reps if k in x and "tokens_per_s" in x[k]] or [0])
            ratios = [x["ratio"] for x in reps if "ratio" in x]
            row = {"model": model, "shape": shape(model), "batch": B, "ctx": a.ctx,
                   "targets": a.targets, "tokens": tok, "repeats": reps,
                   "ours_tokens_per_s": med("ours"),
                   "torch_tokens_per_s": med("torch") if use_torch else None,
                   "ratio_median": statistics.median(ratios) if ratios else None}
            rows.append(row)
            print(f"{model:8s} {B:5d} med {row['ours_tokens_per_s']:11.0f} "
                  f"{(row['torch_tokens_per_s'] or 0):12.0f} {(row['ratio_median'] or float('nan')):10.3f}",
                  flush=True)
    out = Path(a.out) if a.out else HERE / "results" / f"train_step_cpu-{os.uname().nodename}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "train_step_cpu", "cpus": os.cpu_count(),
                               "python": sys.version.split()[0], "steps": a.steps,
                               "warmup": a.warmup, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
