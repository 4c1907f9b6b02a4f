"""Peak GPU memory of a LoRA training step, per component, and its exact extrapolation to depth
and vocabulary.

Runs BitNetModel.loss_and_grads + AdamW (as benchmarks/train_step.py, same fast weights) on
GpuBackend at a shape that fits the adapter (lavapipe: 128 MiB per storage binding), records the
device layer's high-water mark of allocated storage-buffer bytes
(kernels/device Context.peak_allocated_bytes: live tensors plus the free pool) and splits it:

    table       embedding / tied lm_head, as stored (float16 since issue 3)
    ternary     2-bit packed projections
    norms       RMSNorm weights
    lora        adapter parameters, gradients, AdamW moments (4 x params x 4 B)
    residuals   saved layer inputs, L x N x D x 4 B (the only activations kept across layers)
    workspace   the rest of the peak: one layer's recomputed activations and backward
                temporaries, lm_head chunk, free-pool buffers (independent of L and V)

Every component but `workspace` is a closed form in (L, V, shapes); `workspace` does not depend
on L or V (the lm_head chunk is fixed at 8192 rows) and is measured. So the peak at full depth
and vocabulary is  measured peak + closed forms(L_full, V_full) - closed forms(L, V), and
running two depths checks the per-layer term.

    python benchmarks/memory.py --shape 2b4t --layers 1,2 --vocab 16384 [--plain] [--out F]
    python benchmarks/memory.py --shape 2b4t --dry          # the full model (30 layers, V 128256)
    python benchmarks/memory.py --shape 2b4t --dry --embeddings host   # table in host memory

--dry skips every GPU dispatch (results are garbage) but allocates exactly as a real run: every
allocation in GpuBackend is decided on the host from shapes alone, so the allocated-bytes
counter follows the same sequence. The per-binding size check is lifted to the adapter's
maximum buffer size (nothing is bound), so the full 2B-4T model can be accounted on lavapipe;
`--check-dry` runs a small shape both ways and requires identical peaks.

--plain measures the old path instead: forward(keep=True) saving every activation, whole
logits, cross_entropy, backward (float32 table with --f32-table).
"""
from __future__ import annotations

import gc
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # sibling modules
from common import machine_info, out_path, parser, write_json  # noqa: E402
from shapes import CONFIGS  # noqa: E402
from train_step import ALPHA, RANK, TARGETS, _SharedCodesGpu, fast_weights  # noqa: E402

MiB = 2 ** 20


def closed_forms(cfg, N: int, targets: str, table_bytes_per: int) -> dict[str, int]:
    """Bytes of every component that has a closed form (see the module docstring)."""
    from bitswarm.kernels.config import LoRAConfig
    from bitswarm.kernels.lora import init_lora
    L, D, I, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    ternary = 0
    for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        out, k = cfg.proj_shape(p)
        ternary += out * -(-k // 16) * 4
    one = replace(cfg, num_hidden_layers=1)
    lora_params = sum(v.size for v in init_lora(one, LoRAConfig(rank=RANK, alpha=ALPHA,
                                                                target_modules=TARGETS[targets]),
                                                0).values())
    return {"table": V * D * table_bytes_per, "ternary": L * ternary,
            "norms": (L * (3 * D + I) + D) * 4, "lora": L * lora_params * 4 * 4,
            "residuals": L * N * D * 4}


def measure(be, cfg, targets: str, B: int, T: int, steps: int, plain: bool, f32_table: bool):
    """Peak and resident bytes of `steps` training steps (see the module docstring)."""
    from bitswarm.kernels.config import LoRAConfig
    from bitswarm.kernels.lora import init_lora, trainable_keys
    from bitswarm.kernels.model import BitNetModel
    from bitswarm.kernels.ops.lm_head.host_table import HostTable
    from bitswarm.kernels.optim import AdamW, AdamWConfig
    ctx = be.ctx
    be._rope.clear()                # each run pays for its own RoPE tables, as a fresh process
    gc.collect()
    ctx.trim()
    base = ctx.allocated_bytes
    ctx.reset_peak()
    if f32_table or not hasattr(be, "table"):
        be.table = be.tensor
    lcfg = LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS[targets])
    model = BitNetModel(fast_weights(cfg, 0), be, lcfg)
    state = init_lora(cfg, lcfg, 0)
    model.set_lora(state)
    keys = trainable_keys(state, lcfg)
    opt = AdamW(be, AdamWConfig(lr=1e-4))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.vocab_size, (B, T + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    table_bytes = 0 if isinstance(model.embed, HostTable) else model.embed.nbytes
    resident = ctx.allocated_bytes - base
    peaks, times, losses = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        if plain:
            t = y.reshape(-1).astype(np.int32)
            logits, saved = model.forward(x, keep=True)
            lrows, dlog = be.cross_entropy(logits, be.tensor(t), 1.0 / t.size)
            del logits
            grads = model.backward(dlog, saved)
            del dlog, saved
            loss = float(np.sum(be.numpy(lrows))) / t.size
        else:
            loss, _, grads = model.loss_and_grads(x, y)
        opt.step(model.lora, {k: grads[k] for k in keys})
        del grads
        ctx.sync()
        gc.collect()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        peaks.append(ctx.peak_allocated_bytes - base)
    res = {"layers": cfg.num_hidden_layers, "vocab": cfg.vocab_size, "B": B, "T": T,
           "targets": targets, "plain": plain, "table_dtype": model.embed.dtype,
           "table_bytes": table_bytes, "resident_after_upload": resident,
           "peak_per_step": peaks, "peak": peaks[-1], "step_s": times, "losses": losses,
           "buffers_created": ctx.n_buffers_created}
    del model, opt
    gc.collect()
    ctx.trim()
    return res


def main() -> None:
    ap = parser("memory", __doc__.splitlines()[0])
    ap.add_argument("--shape", default="2b4t")
    ap.add_argument("--layers", default="full",
                    help="depths to measure (comma separated; full = the shape's depth)")
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary (0 = the shape's)")
    ap.add_argument("--targets", default="qkvo")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="the save-everything path")
    ap.add_argument("--f32-table", action="store_true", help="float32 table (as before)")
    ap.add_argument("--dry", action="store_true", help="allocate only, dispatch nothing")
    ap.add_argument("--embeddings", default="gpu", choices=["gpu", "host"],
                    help="table residency: host keeps it off the GPU (streamed lm_head)")
    ap.add_argument("--check-dry", action="store_true",
                    help="run the first depth for real and dry; require equal peaks")
    args = ap.parse_args()
    from bitswarm.kernels.gpu_backend import GpuBackend
    be = GpuBackend(table_residency=args.embeddings)
    _SharedCodesGpu.install(be)
    real_dispatch = be.ctx.dispatch

    def set_dry(on: bool) -> None:
        be.ctx.dispatch = (lambda *a, **k: None) if on else real_dispatch
        be.ctx.max_binding = int(be.ctx.limits["max-buffer-size"] if on else
                                 be.ctx.limits["max-storage-buffer-binding-size"])

    set_dry(args.dry)
    full = CONFIGS[args.shape]
    depths = [full.num_hidden_layers if d == "full" else int(d) for d in args.layers.split(",")]
    if args.check_dry:
        L0 = depths[0]
        cfg = replace(CONFIGS[args.shape], num_hidden_layers=L0,
                      vocab_size=args.vocab or CONFIGS[args.shape].vocab_size)
        peaks = {}
        for dry in (False, True):
            set_dry(dry)
            peaks[dry] = measure(be, cfg, args.targets, args.batch, args.ctx, args.steps,
                                 args.plain, args.f32_table)["peak_per_step"]
        print(f"check-dry: real {peaks[False]} dry {peaks[True]}")
        if peaks[False] != peaks[True]:
            raise SystemExit("dry-run peaks differ from the real run")
        set_dry(args.dry)
    N = args.batch * args.ctx
    tb = 4 if args.f32_table else 2
    rows = []
    for L in depths:
        cfg = replace(full, num_hidden_layers=L, vocab_size=args.vocab or full.vocab_size)
        r = measure(be, cfg, args.targets, args.batch, args.ctx, args.steps, args.plain,
                    args.f32_table)
        r["dry"] = args.dry
        tb = r["table_bytes"] / (cfg.vocab_size * cfg.hidden_size)   # 0 when on the host
        cf = closed_forms(cfg, N, args.targets, int(tb) if tb.is_integer() else tb)
        r["closed_forms"] = cf
        r["workspace"] = r["peak"] - sum(cf.values())
        full_cf = closed_forms(full, N, args.targets, tb)
        r["extrapolated"] = {**full_cf, "workspace": r["workspace"],
                             "peak": sum(full_cf.values()) + r["workspace"]}
        rows.append(r)
        print(f"L={L} V={cfg.vocab_size}: peak {r['peak'] / MiB:.1f} MiB (steps "
              f"{[round(p / MiB, 1) for p in r['peak_per_step']]}), " +
              ", ".join(f"{k} {v / MiB:.1f}" for k, v in cf.items()) +
              f", workspace {r['workspace'] / MiB:.1f}; step {r['step_s'][-1]:.1f} s")
        ex = r["extrapolated"]
        print(f"  -> {args.shape} (L={full.num_hidden_layers}, V={full.vocab_size}): " +
              ", ".join(f"{k} {v / MiB:.1f}" for k, v in ex.items()) + " MiB")
        sys.stdout.flush()
    write_json(out_path("memory", args.out), {"benchmark": "memory", "shape": args.shape,
                                             "machine": machine_info(be.ctx), "rows": rows,
                                             "embeddings": args.embeddings,
                                             "argv": sys.argv[1:]})


if __name__ == "__main__":
    main()
