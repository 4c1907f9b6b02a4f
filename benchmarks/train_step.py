"""End-to-end LoRA fine-tuning step: tokens/s and peak GPU memory, ours vs baselines in one run.

Ours: kernels/model.py BitNetModel.loss_and_grads + kernels/optim.py AdamW on GpuBackend (WGSL),
batch 4 x ctx 128 = 512 tokens, LoRA rank 8 (alpha 16) on q/k/v/o ("qkvo") or all seven
projections ("all"). Weights: random ternary codes (one layer's codes drawn and shared by every
layer, uploaded per layer, so GPU memory is that of the full model), N(0, 0.02) tied embeddings.
Peak GPU memory: the device layer's high-water mark of allocated storage-buffer bytes
(kernels/device Context.peak_allocated_bytes; wgpu's own internal allocations are not counted).

Baselines, same shapes, same run:
  torch+peft: transformers BitNetForCausalLM (online ternary AutoBitLinear, bf16) + PEFT LoRA,
              torch.optim.AdamW, on CUDA when torch sees a GPU; peak = torch.cuda.max_memory_allocated.
  numpy:      our CpuBackend (kernels/ops/*/cpu.py) on the CPU; measured at 1 and 2 layers and
              extrapolated linearly to the full depth (a full-depth NumPy step takes minutes).

    python benchmarks/train_step.py [--quick] [--models 125m,1b,2b4t] [--targets qkvo,all]
                                    [--embeddings gpu,host] [--recompute auto|on|off]
                                    [--activation-memory MIB]
                                    [--batch 4,16] [--profile] [--ste f32,f16]
                                    [--matmul-tile auto,64,128] [--f16-pairs on,off]
                                    [--matmul-ks8 8,16] [--lm-widen on,off]
                                    [--ste-compare STEPS [--ste-probe 2]]

--batch runs every listed batch size (sequences of ctx 128; each its own row, default 4).
--profile (ours only) syncs the GPU around every backend op of the step and reports, per op
family, calls and milliseconds (host encoding + GPU time of that op, no overlap), the sum and
the step's own time without the syncs.

--ste f32,f16,i16,i8 runs our step with each STE input-gradient arithmetic (GpuBackend.
ste_precision: fp32; packed-f16 partial sums where the adapter has shader-f16; f16sel: f16 with
ste_select_decode; i16 / i8: dy quantized per row to 15 / 8 bits on int8 dot products), each its
own row; torch runs once per shape. --ste-compare STEPS instead trains STEPS steps of each
--models shape ("default": the embedded default model) from the same seed on the same real-text
batches (node/data.py over the repository's docs/), with f32, with each non-f32 --ste precision
(default f16), and (control) with f32 from an adapter start 1 ulp away, and reports the loss
curves' max relative difference from the f32 run, the final adapters' relative distance, and
per STE call of the first --ste-probe steps the cosine and relative error of dx(p) vs dx(f32)
on the same dy.

--matmul-tile auto,64 runs our step with each tiled-matmul tile edge (GpuBackend.matmul_tile:
auto = matmul_tile's choice by shape, 64 = matmul.wgsl main, 128 = main8; the lm_head's
matmuls; the same bits), each its own row (after each --ste value), in --profile too.
--f16-pairs on,off, --matmul-ks8 8,16 and --lm-widen on,off likewise (GpuBackend.
matmul_f16_pairs: f16 table words read two elements at a time; matmul_ks8: main8's k per
step; lm_head_widen: f16 table chunks widened to f32 for main8; the same bits).

--embeddings host keeps the embedding / lm_head table in host memory and streams it through the
GPU (GpuBackend table_residency="host"); each residency is its own row. Where nvidia-smi exists,
the driver's device-wide memory in use is sampled during our run too (`driver_*` fields: the
peak minus the reading before the model was built), a check that sees wgpu's own allocations.
"""
from __future__ import annotations

import gc
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # sibling modules
from common import DriverMemory, machine_info, out_path, parser, torch_cuda, write_json  # noqa: E402
from shapes import CONFIGS  # noqa: E402

B, T, RANK, ALPHA = 4, 128, 8, 16.0
EPOCH_TOKENS = 41_700          # PubMedQA epoch of QVAC Fabric's benchmark (~41.7k tokens)
# "none": the qkvo model with its adapter removed after upload (the frozen model's forward and
# input-gradient backward alone, every LoRA matmul and AdamW skipped): the step time of qkvo
# minus none is what LoRA costs per step (an A/B measurement only: LoRAConfig needs a target)
TARGETS = {"none": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "qkvo": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def fast_weights(cfg, seed: int):
    """BitNetWeights with one layer of random ternary codes shared by all layers (host memory
    and setup time of one layer; formats/hf_checkpoint.random_bitnet draws every layer)."""
    from bitswarm.kernels.config import PROJECTIONS, BitNetWeights, LayerWeights, TernaryLinear
    rng = np.random.default_rng(seed)
    D, I = cfg.hidden_size, cfg.intermediate_size
    proj = {p: TernaryLinear(rng.integers(-1, 2, cfg.proj_shape(p), dtype=np.int8),
                             np.float32(1 / 0.016)) for p in PROJECTIONS}
    layers = [LayerWeights(np.ones(D, np.float32), np.ones(D, np.float32),
                           np.ones(D, np.float32), np.ones(I, np.float32), dict(proj))
              for _ in range(cfg.num_hidden_layers)]
    embed = (rng.standard_normal((cfg.vocab_size, D), dtype=np.float32) * 0.02)
    return BitNetWeights(cfg, embed, layers, np.ones(D, np.float32))


class _SharedCodesGpu:
    """GpuBackend's host-side 2-bit packing (`_packed`, used by ternary and ternary_group)
    memoized per codes array: layers share codes in fast_weights. Every projection still gets
    its own GPU upload."""

    def __init__(self, be):
        self.pack = be._packed
        self.memo = {}

    def __call__(self, codes):
        if id(codes) not in self.memo:
            self.memo[id(codes)] = (codes, self.pack(codes))     # keeps codes alive: ids stay
        return self.memo[id(codes)][1]

    @classmethod
    def install(cls, be) -> None:
        be._packed = cls(be)


def batch(cfg, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def setup_ours(backend, cfg, targets, recompute: str = "auto", activation_mib: int | None = None):
    """(model, step): our model with a fresh adapter and AdamW; step() runs one training step
    (loss_and_grads + AdamW + sync) and returns the loss. activation_mib: the model's
    activation_budget in MiB (recompute auto; None: the model's default rule)."""
    from bitswarm.kernels.config import LoRAConfig
    from bitswarm.kernels.lora import init_lora, trainable_keys
    from bitswarm.kernels.model import BitNetModel
    from bitswarm.kernels.optim import AdamW, AdamWConfig
    lcfg = LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS[targets])
    model = BitNetModel(fast_weights(cfg, 0), backend, lcfg)
    if recompute != "auto":
        model.recompute = recompute == "on"
    if activation_mib is not None:
        model.activation_budget = activation_mib * 2**20
    state = init_lora(cfg, lcfg, 0)
    model.set_lora(state)
    keys = trainable_keys(state, lcfg)
    if targets == "none":
        model.lora, keys = {}, []
    opt = AdamW(backend, AdamWConfig(lr=1e-4))
    ids, tg = batch(cfg, 1)
    ctx = getattr(backend, "ctx", None)

    def step() -> float:
        loss, _, grads = model.loss_and_grads(ids, tg)      # reads the loss back: a sync
        opt.step(model.lora, {k: grads[k] for k in keys})
        del grads
        if ctx is not None:
            ctx.sync()
        return loss
    return model, step


def run_ours(backend, cfg, targets, steps: int, warmup: int, recompute: str = "auto",
             activation_mib: int | None = None) -> dict:
    t0 = time.perf_counter()
    model, step_fn = setup_ours(backend, cfg, targets, recompute, activation_mib)
    ctx = getattr(backend, "ctx", None)
    setup = time.perf_counter() - t0
    losses, times = [], []
    for s in range(warmup + steps):
        t1 = time.perf_counter()
        losses.append(step_fn())
        if s >= warmup:
            times.append(time.perf_counter() - t1)
    step = float(np.median(times))
    res = {"step_s": step, "tokens_per_s": B * T / step, "losses": losses, "setup_s": setup,
           "recompute": model.recomputes(B * T),
           "recomputed_layers": model.recomputed_layers(B * T),
           "activation_memory_mib": activation_mib}
    budget = model.effective_activation_budget()
    if budget is not None:
        res["activation_budget_mib"] = budget / 2**20     # the flag's, or the auto share
    if ctx is not None:
        res.update(peak_gpu_bytes=ctx.peak_allocated_bytes, allocated_bytes=ctx.allocated_bytes,
                   dispatches=ctx.n_dispatches, submits=ctx.n_submits)
    del model, step_fn
    gc.collect()
    return res


# GpuBackend ops by family as --profile reports them (matmul in a training step is LoRA's)
PROFILE_OPS = {
    "bitlinear forward": ("bitlinear", "bitlinear_group"),
    "bitlinear_backward (STE)": ("bitlinear_backward",),
    "quantize_act": ("quantize_act",),
    "attention": ("attention",),
    "attention_backward": ("attention_backward",),
    "lm_head_cross_entropy": ("lm_head_cross_entropy",),
    "rmsnorm (+ backward)": ("rmsnorm", "rmsnorm_backward"),
    "matmul (LoRA)": ("matmul",),
    "rope": ("rope",),
    "relu2_gate (+ backward), add": ("relu2_gate", "relu2_gate_backward", "add"),
    "embedding, adamw_, transfers": ("embedding", "adamw_", "tensor", "zeros_like", "numpy"),
}


def profile_ours(backend, cfg, targets, steps: int, warmup: int,
                 recompute: str = "auto", activation_mib: int | None = None) -> dict:
    """Our step with the GPU synced around every backend op: {family: {calls, ms}} (best step
    per family), "sum of ops", and "step (no syncs)" (median step of the same model without
    the syncs, for comparison)."""
    import functools
    model, step_fn = setup_ours(backend, cfg, targets, recompute, activation_mib)
    ctx = backend.ctx
    for _ in range(warmup):
        step_fn()
    plain = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step_fn()
        plain.append(time.perf_counter() - t0)
    times: dict[str, float] = {}
    calls: dict[str, int] = {}
    for fam, names in PROFILE_OPS.items():
        for n in names:
            fn = getattr(backend, n)

            @functools.wraps(fn)
            def timed(*a, _fn=fn, _fam=fam, **k):
                ctx.sync()
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    ctx.sync()
                    times[_fam] = times.get(_fam, 0.0) + time.perf_counter() - t0
                    calls[_fam] = calls.get(_fam, 0) + 1
            setattr(backend, n, timed)
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        for _ in range(steps):
            times.clear(), calls.clear()
            t0 = time.perf_counter()
            step_fn()
            times["step (synced)"] = time.perf_counter() - t0
            times["sum of ops"] = sum(v for k, v in times.items() if k != "step (synced)")
            for k, v in times.items():
                best[k] = min(best.get(k, v), v)
            counts = dict(calls)
    finally:
        for names in PROFILE_OPS.values():
            for n in names:
                backend.__dict__.pop(n, None)
    out = {k: {"calls": counts.get(k), "ms": round(1e3 * v, 2)} for k, v in best.items()}
    out["step (no syncs)"] = {"calls": None, "ms": round(1e3 * float(np.median(plain)), 2)}
    out["recompute"] = model.recomputes(B * T)
    out["recomputed_layers"] = model.recomputed_layers(B * T)
    del model, step_fn
    gc.collect()
    return out


def run_numpy(cfg, targets, steps: int) -> dict:
    """CpuBackend at 1 and 2 layers, extrapolated: t(L) = t1 + (L - 1) * (t2 - t1)."""
    from bitswarm.kernels.backend import CpuBackend
    t = {}
    for L in (1, 2):
        c = replace(cfg, num_hidden_layers=L)
        t[L] = run_ours(CpuBackend(), c, targets, steps, 1)["step_s"]
    step = t[1] + (cfg.num_hidden_layers - 1) * (t[2] - t[1])
    return {"step_s": step, "tokens_per_s": B * T / step, "measured_s": {"1": t[1], "2": t[2]},
            "extrapolated_to_layers": cfg.num_hidden_layers}


def run_torch(torch, cfg, targets, steps: int, warmup: int, tmp: Path) -> dict:
    """transformers BitNetForCausalLM (online AutoBitLinear, bf16) + PEFT LoRA on CUDA."""
    import shutil
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM
    hf = BitNetConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                      intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                      num_attention_heads=cfg.num_attention_heads,
                      num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
                      rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
                      max_position_embeddings=cfg.max_position_embeddings,
                      tie_word_embeddings=cfg.tie_word_embeddings)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    d = tmp / f"hf-{cfg.hidden_size}-{cfg.num_hidden_layers}-{cfg.vocab_size}"
    if not (d / "config.json").exists():      # saved once per model, loaded per target set
        shutil.rmtree(d, ignore_errors=True)
        with torch.device("cuda"):
            m = BitNetForCausalLM(hf).to(torch.bfloat16)
        m.save_pretrained(d)                  # then reload: the quantizer applies on load only
        del m
        torch.cuda.empty_cache()
        import json
        cj = json.loads((d / "config.json").read_text())
        cj["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                     "quantization_mode": "online"}
        (d / "config.json").write_text(json.dumps(cj))
    try:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda")
    except (TypeError, ImportError, ValueError):    # older transformers / no accelerate
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16).cuda()
    q = model.model.layers[0].self_attn.q_proj
    kind = type(q).__name__
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                             target_modules=list(TARGETS[targets])))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids, tg = batch(cfg, 1)
    ids = torch.from_numpy(ids).cuda()
    setup = time.perf_counter() - t0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for s in range(warmup + steps):
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)          # transformers shifts the labels
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss))
        torch.cuda.synchronize()
        if s >= warmup:
            times.append(time.perf_counter() - t1)
    step = float(np.median(times))
    res = {"step_s": step, "tokens_per_s": B * T / step, "losses": losses, "setup_s": setup,
           "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()), "q_proj_class": kind,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    del model, opt, out
    gc.collect()
    torch.cuda.empty_cache()
    return res


class _SteProbe:
    """Wraps be.bitlinear_backward: every call also computes the STE gradient of the same dy on
    the f32 path and on each of `precs`, without acc (reads them back: a sync per call), and
    records per precision the cosine and relative errors against f32 per weight shape (stats:
    precision -> list). Returns what the wrapped path returns."""

    def __init__(self, be, precs=("f16",)):
        self.be, self.precs, self.stats = be, tuple(precs), {p: [] for p in precs}
        self.inner = type(be).bitlinear_backward.__get__(be)

    def __call__(self, dy, w, acc=None):
        be = self.be
        saved = be.ste_precision
        try:
            be.ste_precision = "f32"
            a = be.numpy(self.inner(dy, w)).astype(np.float64)
            got = {}
            for p in self.precs:
                be.ste_precision = p
                got[p] = be.numpy(self.inner(dy, w)).astype(np.float64)
        finally:
            be.ste_precision = saved
        na = np.linalg.norm(a)
        dmax = [float(v) for v in np.percentile(np.abs(be.numpy(dy)).max(axis=1), [0, 50, 100])]
        for p, b in got.items():
            d = np.linalg.norm(b - a)
            rows = np.linalg.norm(b - a, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-300)
            self.stats[p].append({"shape": list(w.shape), "n": int(dy.shape[0]),
                                  "cos": float(a.ravel() @ b.ravel()
                                               / max(na * np.linalg.norm(b), 1e-300)),
                                  "rel_err": float(d / max(na, 1e-300)),
                                  "max_row_rel_err": float(rows.max()),
                                  "max_abs_err_over_max": float(np.abs(b - a).max()
                                                                / max(np.abs(a).max(), 1e-300)),
                                  "dy_row_absmax_range": dmax})
        return self.inner(dy, w, acc)

    def install(self):
        self.be.bitlinear_backward = self

    def remove(self):
        self.be.__dict__.pop("bitlinear_backward", None)


def ste_compare(be, shape: str, steps: int, batch: int, probe_steps: int, lr: float = 1e-3,
                precs=("f16",)) -> dict:
    """Train `steps` steps of shape ("default" or a CONFIGS name, random weights) with the f32
    STE, then with each of `precs`, then (control) f32 from a start 1 ulp away, from the same
    adapter seed on the same real-text batches; see --ste-compare. Keys per precision p:
    losses_p, loss_max_rel_diff_p, adapter_rel_dist_p, adapter_rel_dist_of_update_p,
    probe_summary_p (control: the same with p = f32_ulp, no probe)."""
    from bitswarm.kernels.config import LoRAConfig
    from bitswarm.kernels.lora import init_lora, trainable_keys
    from bitswarm.kernels.model import BitNetModel
    from bitswarm.kernels.optim import AdamW, AdamWConfig
    from bitswarm.node.data import TrainSampler, find_text_files, split_train_heldout, tokenize
    from bitswarm.node.models import load_model
    loaded = load_model(None)
    weights = loaded.weights if shape == "default" else fast_weights(CONFIGS[shape], 0)
    cfg = weights.config
    train, _ = split_train_heldout(find_text_files(Path(__file__).resolve().parent.parent / "docs"))
    docs = [tokenize(loaded.tokenizer, f) for f in train]
    for d in docs:
        d.ids = np.asarray(d.ids) % cfg.vocab_size
    lcfg = LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS["qkvo"])
    out = {"model": shape, "B": batch, "T": T, "steps": steps, "lr": lr,
           "config": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                      "vocab": cfg.vocab_size}}
    finals = {}
    start = init_lora(cfg, lcfg, 0)
    # control: fp32 from a start 1 ulp away (each adapter value times 1 +- 2^-23): how far any
    # tiny perturbation moves this trajectory, against which f16's difference is read
    prng = np.random.default_rng(1)
    nudged = {k: (v * (1 + prng.choice([-1.0, 1.0], v.shape) * 2.0 ** -23)).astype(np.float32)
              for k, v in start.items()}
    for run in ("f32", *precs, "f32_ulp"):
        prec = "f32" if run == "f32_ulp" else run
        be.ste_precision = prec
        model = BitNetModel(weights, be, lcfg)
        model.set_lora(nudged if run == "f32_ulp" else start)
        keys = trainable_keys(model.lora, lcfg)
        opt = AdamW(be, AdamWConfig(lr=lr))
        sampler = TrainSampler(docs, T, seed=0)
        probe = _SteProbe(be, precs) if run == "f32" else None
        losses, times = [], []
        for s_ in range(steps):
            ids, tg = sampler.batch(batch)
            if probe is not None and s_ < probe_steps:
                probe.install()
            t0 = time.perf_counter()
            loss, _, grads = model.loss_and_grads(ids, tg)
            opt.step(model.lora, {k: grads[k] for k in keys})
            del grads
            be.ctx.sync()
            times.append(time.perf_counter() - t0)
            if probe is not None:
                probe.remove()
            losses.append(float(loss))
        out[f"losses_{run}"] = losses
        out[f"median_step_s_{run}"] = float(np.median(times[2:] if steps > 4 else times))
        if probe is not None:
            out["probe"] = probe.stats
        finals[run] = model.get_lora()
        del model, opt
        gc.collect()
    l32 = np.array(out["losses_f32"])
    den = sum(float(np.sum(finals["f32"][k] ** 2)) for k in finals["f32"])
    moved = sum(float(np.sum((finals["f32"][k] - start[k]) ** 2)) for k in finals["f32"])
    for run in (*precs, "f32_ulp"):
        lo = np.array(out[f"losses_{run}"])
        out[f"loss_max_rel_diff_{run}"] = float(np.max(np.abs(lo - l32) / np.abs(l32)))
        num = sum(float(np.sum((finals[run][k] - finals["f32"][k]) ** 2)) for k in finals["f32"])
        out[f"adapter_rel_dist_{run}"] = float(np.sqrt(num / den))
        out[f"adapter_rel_dist_of_update_{run}"] = float(np.sqrt(num / max(moved, 1e-300)))
    for p, st in out.get("probe", {}).items():
        if st:
            out[f"probe_summary_{p}"] = {
                "calls": len(st), "min_cos": min(x["cos"] for x in st),
                "max_rel_err": max(x["rel_err"] for x in st),
                "median_rel_err": float(np.median([x["rel_err"] for x in st])),
                "max_row_rel_err": max(x["max_row_rel_err"] for x in st)}
    return out


def main() -> None:
    ap = parser("train_step", __doc__.splitlines()[0])
    ap.add_argument("--models", default=None)
    ap.add_argument("--targets", default="qkvo,all")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--embeddings", default="gpu", help="table residencies to run: gpu,host")
    ap.add_argument("--bwd-tile", default="auto", choices=["auto", "64", "128"],
                    help="STE input gradient tile edge (GpuBackend.bitlinear_bwd_tile)")
    ap.add_argument("--ste-int-splits", default="auto", metavar="auto|N",
                    help="int STE slabs over OUT (GpuBackend.ste_int_splits; the same bits)")
    ap.add_argument("--recompute", default="auto", choices=["auto", "on", "off"],
                    help="layer recomputation in our step (auto: the model's default, on for GPUs)")
    ap.add_argument("--activation-memory", type=int, default=None, metavar="MIB",
                    help="--recompute auto: MiB for saved layer activations in our step (the "
                         "last layers that fit are saved, the others recomputed; default: the "
                         "model's all-or-nothing rule at 512 MiB)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--tmp", default="/tmp/bitswarm-bench")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default 4; "
                    "--quick: 2), sequences of ctx 128 (--quick: 32)")
    ap.add_argument("--gemm-tile", default="auto", choices=["auto", "64", "128"],
                    help="force the W1.58A8 forward and STE-gradient tile edge (A/B runs)")
    ap.add_argument("--lora-kernels", default="skinny", choices=["skinny", "tiled"],
                    help="LoRA's rank-r products on skinny_*.wgsl or the tiled matmul (A/B runs)")
    ap.add_argument("--profile", action="store_true",
                    help="ours only: time every backend op with the GPU synced around it")
    ap.add_argument("--ste", default=None, metavar="LIST",
                    help="comma list of STE input-gradient arithmetics for our rows: f32, f16, "
                         "f16sel (f16 decoding codes by selects; default: the backend's choice, "
                         "BITSWARM_GPU_STE / auto)")
    ap.add_argument("--matmul-tile", default="auto", metavar="LIST",
                    help="comma list of tiled-matmul tile edges for our rows: auto, 64, 128 "
                         "(GpuBackend.matmul_tile; the lm_head's matmuls)")
    ap.add_argument("--f16-pairs", default=None, metavar="LIST",
                    help="comma list of on/off: GpuBackend.matmul_f16_pairs for our rows")
    ap.add_argument("--lm-widen", default=None, metavar="LIST",
                    help="comma list of on/off: GpuBackend.lm_head_widen for our rows")
    ap.add_argument("--matmul-ks8", default=None, metavar="LIST",
                    help="comma list of 8/16: GpuBackend.matmul_ks8 for our rows")
    ap.add_argument("--ste-compare", type=int, default=0, metavar="STEPS",
                    help="train STEPS steps per --models shape (or 'default') with f32 and f16 "
                         "STE on the same data and compare (no timing rows)")
    ap.add_argument("--ste-probe", type=int, default=2, metavar="STEPS",
                    help="--ste-compare: steps whose every STE call is compared f16 vs f32")
    args = ap.parse_args()
    if args.activation_memory is not None and (args.activation_memory < 0
                                               or args.recompute != "auto"):
        ap.error(f"--activation-memory: expected an integer of MiB >= 0 with --recompute auto, "
                 f"got {args.activation_memory} with --recompute {args.recompute}")
    global B, T
    if args.quick:
        B, T = 2, 32
    try:
        batches = [int(b) for b in args.batch.split(",")] if args.batch else [B]
        if any(b < 1 for b in batches):
            raise ValueError
    except ValueError:
        ap.error(f"--batch: expected comma-separated positive integers, got {args.batch!r}")
    from bitswarm.kernels.gpu_backend import GpuBackend
    be = GpuBackend()
    _SharedCodesGpu.install(be)
    if args.gemm_tile != "auto":
        be.bitlinear_tm = be.bitlinear_bwd_tile = int(args.gemm_tile)
    be.matmul_skinny = args.lora_kernels == "skinny"
    if args.bwd_tile != "auto":
        be.bitlinear_bwd_tile = int(args.bwd_tile)
    if args.ste_int_splits != "auto":
        be.ste_int_splits = int(args.ste_int_splits)
    residencies = args.embeddings.split(",")
    backends = {"gpu": be}
    if "host" in residencies:
        backends["host"] = GpuBackend(be.ctx, table_residency="host")
        backends["host"].bitlinear_tm = be.bitlinear_tm
        backends["host"].bitlinear_bwd_tile = be.bitlinear_bwd_tile
        backends["host"].ste_int_splits = be.ste_int_splits
        backends["host"].matmul_skinny = be.matmul_skinny
        _SharedCodesGpu.install(backends["host"])
    info = machine_info(be.ctx)
    print(f"adapter: {info['adapter']}")
    stes = [v.strip() for v in args.ste.split(",")] if args.ste else [be.ste_precision]
    if any(v not in ("f32", "f16", "f16sel", "i16", "i8") for v in stes):
        ap.error(f"--ste: expected f32, f16, f16sel, i16 and/or i8, got {args.ste!r}")
    if any(v.startswith("f16") for v in stes) and "shader-f16" not in be.ctx.features:
        ap.error("--ste f16: this adapter lacks shader-f16")
    try:
        mtiles = [None if v.strip() == "auto" else int(v) for v in args.matmul_tile.split(",")]
        if any(v not in (None, 64, 128) for v in mtiles):
            raise ValueError
    except ValueError:
        ap.error(f"--matmul-tile: expected auto, 64 and/or 128, got {args.matmul_tile!r}")
    pairs = ([{"on": True, "off": False}[v.strip()] for v in args.f16_pairs.split(",")]
             if args.f16_pairs else [be.matmul_f16_pairs])
    ks8s = [int(v) for v in args.matmul_ks8.split(",")] if args.matmul_ks8 else [be.matmul_ks8]
    widens = ([{"on": True, "off": False}[v.strip()] for v in args.lm_widen.split(",")]
              if args.lm_widen else [be.lm_head_widen])
    # (ste, tile) pairs; tile = (matmul_tile, matmul_f16_pairs, matmul_ks8, lm_head_widen)
    variants = [(x, (t, pr, k, wd)) for x in stes for t in mtiles for pr in pairs
                for k in ks8s for wd in widens]
    many = len(variants) > len(stes)

    def set_tile(b, mt):
        b.matmul_tile, b.matmul_f16_pairs, b.matmul_ks8, b.lm_head_widen = mt

    def tile_tag(mt):
        return (f"mm{mt[0] or 'auto'}{'p' if mt[1] else ''}{'k16' if mt[2] == 16 else 'k8'}"
                f"{'w' if mt[3] else ''}")
    if args.ste_compare:
        res = []
        precs = tuple(v for v in (stes if args.ste else ["f16"]) if v != "f32")
        if not precs or "f16sel" in precs:
            ap.error("--ste-compare: --ste lists the precisions to compare with f32 (f16, i16, "
                     "i8)")
        for model in (args.models or "default,125m").split(","):
            r = ste_compare(be, model, args.ste_compare, batches[0], args.ste_probe,
                            precs=precs)
            res.append(r)
            print(f"{model}: {args.ste_compare} steps at {batches[0]} x {T}; loss f32 "
                  f"{r['losses_f32'][0]:.4f} -> {r['losses_f32'][-1]:.4f}; control (fp32 from "
                  f"a start 1 ulp away): max rel loss diff {r['loss_max_rel_diff_f32_ulp']:.2e}, "
                  f"adapter rel dist {r['adapter_rel_dist_f32_ulp']:.2e} "
                  f"({r['adapter_rel_dist_of_update_f32_ulp']:.2e} of the update)")
            for p in precs:
                ps = r.get(f"probe_summary_{p}", {})
                print(f"  {p}: loss {r[f'losses_{p}'][0]:.4f} -> {r[f'losses_{p}'][-1]:.4f}; "
                      f"max rel loss diff {r[f'loss_max_rel_diff_{p}']:.2e}; adapter rel dist "
                      f"{r[f'adapter_rel_dist_{p}']:.2e} "
                      f"({r[f'adapter_rel_dist_of_update_{p}']:.2e} of the update); dx vs f32 "
                      f"over {ps.get('calls')} calls: min cos "
                      f"{ps.get('min_cos', float('nan')):.8f}, rel err median "
                      f"{ps.get('median_rel_err', float('nan')):.2e} max "
                      f"{ps.get('max_rel_err', float('nan')):.2e}, worst row "
                      f"{ps.get('max_row_rel_err', float('nan')):.2e}")
            sys.stdout.flush()
            write_json(out_path("train_step_ste_compare", args.out), {
                "benchmark": "train_step --ste-compare", "machine": info, "rows": res})
        return
    torch = None if (args.no_torch or args.quick) else torch_cuda()
    models = (args.models or ("tiny" if args.quick else "125m,1b,2b4t")).split(",")
    steps = args.steps or (2 if args.quick else 3)
    rows = []
    print(f"{'model':6s} {'B':>3s} {'targets':7s} {'system':16s} {'tok/s':>10s} {'step ms':>9s} {'peak MiB':>9s}"
          f" {'ours/base':>9s}")
    if args.profile:
        profiles = []
        for model in models:
            for targets in args.targets.split(","):
                for B, ste, mt in [(b, x, t) for b in batches for x, t in variants]:
                    be.ste_precision, be.ste_select_decode = ste[:3], ste == "f16sel"
                    set_tile(be, mt)
                    prof = profile_ours(be, CONFIGS[model], targets, steps, 2, args.recompute,
                                        args.activation_memory)
                    profiles.append({"model": model, "targets": targets, "B": B, "T": T,
                                     "ste": ste, "matmul_tile": mt[0] or "auto",
                                     "matmul_f16_pairs": mt[1], "matmul_ks8": mt[2],
                                     "lm_head_widen": mt[3], **prof})
                    print(f"{model} {targets} batch {B} x {T}, STE {ste}, matmul "
                          f"{tile_tag(mt)}, recompute "
                          f"{prof['recompute']} ({prof['recomputed_layers']} of "
                          f"{CONFIGS[model].num_hidden_layers} layers); best of {steps} steps, ms:")
                    for k, v in prof.items():
                        if isinstance(v, dict):
                            c = "" if v["calls"] is None else f"({v['calls']})"
                            print(f"  {k:32s} {c:>6s} {v['ms']:9.2f}")
                    sys.stdout.flush()
                    write_json(out_path("train_step_profile", args.out), {
                        "benchmark": "train_step --profile", "machine": info, "rows": profiles})
        return
    for model, B in [(m, b) for m in models for b in batches]:
        cfg = CONFIGS[model]
        for targets, emb, ste, mt in [(t, e, x, m) for t in args.targets.split(",")
                                      for e in residencies for x, m in variants]:
            r = {"model": model, "targets": targets, "embeddings": emb, "B": B, "T": T,
                 "rank": RANK, "ste": ste, "matmul_tile": mt[0] or "auto",
                 "matmul_f16_pairs": mt[1], "matmul_ks8": mt[2], "lm_head_widen": mt[3]}
            ob = backends[emb]
            ob.ste_precision, ob.ste_select_decode = ste[:3], ste == "f16sel"
            set_tile(ob, mt)
            first = emb == residencies[0] and (ste, mt) == variants[0]
            ob.ctx.trim()
            ob.ctx.reset_peak()
            base_alloc = ob.ctx.allocated_bytes        # rope tables etc. of earlier runs
            with DriverMemory() as dm:
                r["ours"] = run_ours(ob, cfg, targets, steps, 2, args.recompute,  # 2 warm-ups,
                                     args.activation_memory)                    # as torch
            r["ours"]["peak_gpu_bytes"] -= base_alloc
            r["ours"].update(dm.result())
            if torch is not None and first:
                try:
                    r["torch_peft"] = run_torch(torch, cfg, targets, steps, 2, Path(args.tmp))
                except Exception as e:  # a baseline failing must not lose our numbers
                    r["torch_peft"] = {"error": f"{type(e).__name__}: {e}"}
            if not args.no_numpy and first:
                r["numpy"] = run_numpy(cfg, targets, 1)
            r["epoch_s_ours"] = EPOCH_TOKENS / r["ours"]["tokens_per_s"]
            tp = r.get("torch_peft") or next(
                (q["torch_peft"] for q in rows if "torch_peft" in q and q["model"] == model
                 and q["B"] == B and q["targets"] == targets), None)
            if tp and "tokens_per_s" in tp:           # the torch row of this shape, same run
                r["ours_over_torch"] = r["ours"]["tokens_per_s"] / tp["tokens_per_s"]
            rows.append(r)
            ours = r["ours"]["tokens_per_s"]
            for sysname in ("ours", "torch_peft", "numpy"):
                x = r.get(sysname)
                if x is None:
                    continue
                if "error" in x:
                    print(f"{model:6s} {B:3d} {targets:7s} {sysname:16s} ERROR {x['error'][:200]}")
                    continue
                pk = x.get("peak_gpu_bytes")
                name = (f"{sysname}/{emb}/{ste}" + (f"/{tile_tag(mt)}" if many else "")
                        if sysname == "ours" else sysname)
                print(f"{model:6s} {B:3d} {targets:7s} {name:16s} {x['tokens_per_s']:10.1f} "
                      f"{x['step_s'] * 1e3:9.1f} {pk / 2**20 if pk else float('nan'):9.1f} "
                      f"{ours / x['tokens_per_s']:9.3f}"
                      + (f"  recomputed {x['recomputed_layers']}/{cfg.num_hidden_layers}"
                         if sysname == "ours" else ""))
            if "torch_peft" not in r and "ours_over_torch" in r:
                print(f"{'':6s} {'':3s} {'':7s} {'(vs torch above)':16s} {'':10s} {'':9s} "
                      f"{'':9s} {r['ours_over_torch']:9.3f}")
            sys.stdout.flush()
            write_json(out_path("train_step", args.out), {      # after every row: partial runs count
                "benchmark": "train_step", "machine": info, "quick": args.quick, "rows": rows,
                "epoch_tokens": EPOCH_TOKENS, "steps": steps})


if __name__ == "__main__":
    main()
