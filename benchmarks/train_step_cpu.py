"""LoRA training step on the CPU: our NumPy backend against PyTorch + transformers + PEFT, same
cores, same run.

Ours: kernels/model.py BitNetModel.loss_and_grads + kernels/optim.py AdamW on CpuBackend
(NumPy, float32). Baseline: transformers BitNetForCausalLM with online quantization
(`AutoBitLinear`, float32, weights and activations quantized every forward) + PEFT LoRA +
torch.optim.AdamW on the CPU. Both: LoRA rank 8, alpha 16, q/k/v/o (or all seven projections),
lr 1e-4, batch B x ctx 128, random weights of the model's shape (speed does not depend on the
values), one fixed batch of random token ids.

Each system runs in its own worker process (ours in this interpreter, torch in --torch-python,
a venv holding torch, transformers and peft: benchmark-only extras, never runtime
dependencies), both built and warmed up first; then the two take turns, one step each
(--pause-s between turns, so the other side's threads are idle), so that load from other
processes on a shared machine falls on both alike. Every step pair is printed with its ratio
(torch seconds / our seconds); the summary is the median step of each and the median ratio.

    python benchmarks/train_step_cpu.py [--models default,125m] [--batch 8[,16]]
        [--targets qkvo|all] [--steps 7] [--warmup 2] [--pause-s 0.5]
        [--torch-python .venv-bench/bin/python] [--no-torch] [--out FILE]
    python benchmarks/train_step_cpu.py --profile [--models default] [--batch 8] [--steps 3]

--profile times every CpuBackend op of our step (no torch): per op family, the calls per step
and the best of --steps steps' milliseconds, plus what is left (Python between the ops).

Set-up of the baseline venv (CPU wheels; plain PyPI when the PyTorch CPU index is unreachable):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    .venv-bench/bin/pip install transformers peft accelerate

Shapes: "default" is the shipped default model (node/default_model/config.json: D 384, I 1024,
10 layers, 6 / 2 heads of 64, vocab 8192); the others come from benchmarks/shapes.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


def serve(step, info: dict, warmup: int) -> None:
    """Worker loop: warm up, print {"ready": info}, then one step per "step" line on stdin,
    printing {"s": seconds, "loss": loss} for each; exits at end of input."""
    for _ in range(warmup):
        step()
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        loss = step()
        print(json.dumps({"s": time.perf_counter() - t0, "loss": loss}), flush=True)


class Worker:
    """One system's worker process (its own interpreter), driven a step at a time."""

    def __init__(self, python: str, system: str, model: str, B: int, a) -> None:
        cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--models", model,
               "--batch", str(B), "--ctx", str(a.ctx), "--targets", a.targets,
               "--warmup", str(a.warmup), "--tmp", a.tmp]
        env = dict(os.environ, BITSWARM_BENCH_SHAPE=json.dumps(shape(model)))
        self.err = tempfile.TemporaryFile("w+")       # a pipe could fill and block the worker
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True, env=env)
        self.info = self._read().get("ready")

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.p.wait(timeout=60)
            self.err.seek(0)
            raise RuntimeError(self.err.read()[-2000:])
        return json.loads(line)

    def step(self) -> dict:
        self.p.stdin.write("step\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.p.stdin.close()
            self.p.wait(timeout=60)
        except Exception:
            self.p.kill()


def worker_ours(model: str, B: int, T: int, targets: str):
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
    step.backend = be
    from bitswarm.kernels.ops.bitlinear.cpu import int8_enabled
    return step, {"int8_gemm": int8_enabled(), "device": be.device_info}


def worker_torch(model: str, B: int, T: int, targets: str, tmp: Path):
    # benchmarks/kernels.py would shadow Hugging Face's optional `kernels` package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM
    s = shape(model)
    # keyed by the shape: a model saved for an earlier default shape is never reused
    key = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]
    d = tmp / f"hf-cpu-{model}-{key}"
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
    return step, {"q_proj_class": kind, "threads": torch.get_num_threads(),
                  "versions": {"torch": torch.__version__,
                               "transformers": transformers.__version__}}


# CpuBackend ops by family, as the profile reports them (matmul in a training step is LoRA's)
PROFILE_OPS = {
    "bitlinear_backward": ("bitlinear_backward",),
    "bitlinear forward": ("bitlinear", "bitlinear_group"),
    "quantize_act": ("quantize_act",),
    "attention (+ backward)": ("attention", "attention_backward"),
    "lm_head_cross_entropy": ("lm_head_cross_entropy",),
    "rmsnorm (+ backward)": ("rmsnorm", "rmsnorm_backward"),
    "matmul (LoRA)": ("matmul",),
    "rope": ("rope",),
    "relu2_gate (+ backward), add": ("relu2_gate", "relu2_gate_backward", "add"),
    "embedding, adamw_, other": ("embedding", "embedding_backward", "adamw_", "tensor",
                                 "zeros_like", "numpy"),
}


def profile(model: str, B: int, T: int, targets: str, steps: int, warmup: int) -> dict:
    """Our step with every CpuBackend op timed: {family: (calls per step, ms)} (best step per
    family), "step" ms (best step, wall) and the rest. With batch parts (threads.run_parts,
    one per core) the ops of all parts are timed, so a family's ms is thread time summed over
    the parts, and "python + waits" is parts x step minus every op (BITSWARM_CPU_PART_ROWS=
    100000 profiles the unsplit step)."""
    import threading
    step, _ = worker_ours(model, B, T, targets)
    be = step.backend
    parts = len(be.batch_parts(B, T))
    times: dict[str, float] = {}
    calls: dict[str, int] = {}
    lock = threading.Lock()
    for fam, names in PROFILE_OPS.items():
        for n in names:
            fn = getattr(be, n)

            def timed(*a, _fn=fn, _fam=fam, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    dt = time.perf_counter() - t0
                    with lock:
                        times[_fam] = times.get(_fam, 0.0) + dt
                        calls[_fam] = calls.get(_fam, 0) + 1
            setattr(be, n, timed)
    for _ in range(warmup):
        step()
    best: dict[str, float] = {}
    rest = "python" if parts == 1 else f"python + waits ({parts} parts)"
    for _ in range(steps):
        times.clear(), calls.clear()
        t0 = time.perf_counter()
        step()
        total = time.perf_counter() - t0
        times[rest] = parts * total - sum(times.values())
        times["step"] = total
        for k, v in times.items():
            best[k] = min(best.get(k, v), v)
    return {k: {"calls": calls.get(k), "ms": round(1e3 * v, 2)} for k, v in best.items()}


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="benchmarks/train_step_cpu.py",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,125m")
    ap.add_argument("--batch", default="8", help="comma-separated batch sizes (sequences)")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--targets", default="qkvo", choices=sorted(TARGETS))
    ap.add_argument("--steps", type=int, default=7, help="timed step pairs")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pause-s", type=float, default=0.5)
    ap.add_argument("--torch-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--tmp", default="/tmp/bitswarm-bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="time every op of our step")
    ap.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        B = int(a.batch)
        if a.worker == "ours":
            step, info = worker_ours(a.models, B, a.ctx, a.targets)
        else:
            step, info = worker_torch(a.models, B, a.ctx, a.targets, Path(a.tmp))
        serve(step, info, a.warmup)
        return
    if a.profile:
        for model in a.models.split(","):
            for B in map(int, a.batch.split(",")):
                prof = profile(model, B, a.ctx, a.targets, a.steps, a.warmup)
                print(f"{model} batch {B} x {a.ctx} ({a.targets}), load(1m) "
                      f"{os.getloadavg()[0]:.2f}; best of {a.steps} steps:")
                for k, v in prof.items():
                    c = "" if v["calls"] is None else f"({v['calls']})"
                    print(f"  {k:32s} {c:>6s} {v['ms']:9.2f} ms")
                print(f"  tokens/s at the best step: {B * a.ctx / prof['step']['ms'] * 1e3:.0f}")
        return
    use_torch = not a.no_torch and Path(a.torch_python).exists()
    rows = []
    print(f"{'model':8s} {'batch':>5s} {'step':>4s} {'ours tok/s':>11s} {'torch tok/s':>12s} "
          f"{'ours/torch':>10s}   load(1m)")
    for model in a.models.split(","):
        for B in map(int, a.batch.split(",")):
            tok = B * a.ctx
            ours = Worker(sys.executable, "ours", model, B, a)
            torch_w = Worker(a.torch_python, "torch", model, B, a) if use_torch else None
            pairs = []
            try:
                for i in range(a.steps):
                    r = {"ours": ours.step()}
                    time.sleep(a.pause_s)            # let the other side's threads go idle
                    if torch_w is not None:
                        r["torch"] = torch_w.step()
                        time.sleep(a.pause_s)
                        r["ratio"] = r["torch"]["s"] / r["ours"]["s"]
                    r["load_1m"] = os.getloadavg()[0]
                    pairs.append(r)
                    tt = f"{tok / r['torch']['s']:.0f}" if "torch" in r else "-"
                    print(f"{model:8s} {B:5d} {i:4d} {tok / r['ours']['s']:11.0f} {tt:>12s} "
                          f"{r.get('ratio', float('nan')):10.3f}   {r['load_1m']:.2f}", flush=True)
            finally:
                ours.close()
                if torch_w is not None:
                    torch_w.close()
            med = lambda k: tok / statistics.median(x[k]["s"] for x in pairs)  # noqa: E731
            row = {"model": model, "shape": shape(model), "batch": B, "ctx": a.ctx,
                   "targets": a.targets, "tokens": tok, "steps": pairs,
                   "ours_info": ours.info, "torch_info": torch_w.info if torch_w else None,
                   "ours_tokens_per_s": med("ours"),
                   "torch_tokens_per_s": med("torch") if torch_w else None,
                   "ratio_median": statistics.median(x["ratio"] for x in pairs) if torch_w else None}
            rows.append(row)
            print(f"{model:8s} {B:5d}  med {row['ours_tokens_per_s']:11.0f} "
                  f"{(row['torch_tokens_per_s'] or 0):12.0f} "
                  f"{(row['ratio_median'] or float('nan')):10.3f}", flush=True)
    out = Path(a.out) if a.out else HERE / "results" / f"train_step_cpu-{os.uname().nodename}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "train_step_cpu", "cpus": os.cpu_count(),
                               "python": sys.version.split()[0], "steps": a.steps,
                               "warmup": a.warmup, "pause_s": a.pause_s, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
