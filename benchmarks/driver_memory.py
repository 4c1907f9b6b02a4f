"""GPU memory as the driver sees it (nvidia-smi memory.used), phase by phase of a LoRA training
run, next to the device layer's own count of allocated storage-buffer bytes.

The device layer's counter (kernels/device Context.allocated_bytes) is what the other
benchmarks report, like torch.cuda.max_memory_allocated for PyTorch. The driver also holds
wgpu's internal allocations (upload staging, allocator blocks, the Vulkan device itself): this
script shows how much, and where it appears.

    python benchmarks/driver_memory.py --shape 2b4t --targets qkvo --embeddings host
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # sibling modules
from common import DriverMemory, machine_info, out_path, parser, write_json  # noqa: E402
from shapes import CONFIGS  # noqa: E402
from train_step import ALPHA, RANK, TARGETS, _SharedCodesGpu, batch, fast_weights  # noqa: E402

MiB = 2 ** 20


def main() -> None:
    ap = parser("driver_memory", __doc__.splitlines()[0])
    ap.add_argument("--shape", default="2b4t")
    ap.add_argument("--targets", default="qkvo")
    ap.add_argument("--embeddings", default="host", choices=["gpu", "host"])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    probe = DriverMemory()
    phases = []

    def mark(name, ctx=None):
        drv = probe.read() if probe.cmd else None
        row = {"phase": name, "driver_mib": drv, "t": time.perf_counter()}
        if ctx is not None:
            row["allocated_mib"] = ctx.allocated_bytes / MiB
            row["peak_allocated_mib"] = ctx.peak_allocated_bytes / MiB
        phases.append(row)
        print(f"{name:28s} driver {drv if drv is not None else '-':>6} MiB   counted "
              f"{row.get('allocated_mib', 0):8.1f} MiB (peak {row.get('peak_allocated_mib', 0):8.1f})")
        sys.stdout.flush()

    mark("start")
    from bitswarm.kernels.config import LoRAConfig
    from bitswarm.kernels.gpu_backend import GpuBackend
    from bitswarm.kernels.lora import init_lora, trainable_keys
    from bitswarm.kernels.model import BitNetModel
    from bitswarm.kernels.optim import AdamW, AdamWConfig
    be = GpuBackend(table_residency=args.embeddings)
    _SharedCodesGpu.install(be)
    ctx = be.ctx
    mark("context", ctx)
    cfg = CONFIGS[args.shape]
    lcfg = LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS[args.targets])
    w = fast_weights(cfg, 0)
    model = BitNetModel(w, be, lcfg)
    ctx.sync()
    mark("model uploaded", ctx)
    state = init_lora(cfg, lcfg, 0)
    model.set_lora(state)
    keys = trainable_keys(state, lcfg)
    opt = AdamW(be, AdamWConfig(lr=1e-4))
    ids, tg = batch(cfg, 1)
    ctx.sync()
    mark("adapter uploaded", ctx)
    with DriverMemory(interval=0.05) as dm:
        for s in range(args.steps):
            loss, _, grads = model.loss_and_grads(ids, tg)
            opt.step(model.lora, {k: grads[k] for k in keys})
            del grads
            gc.collect()
            ctx.sync()
            mark(f"step {s + 1} (loss {loss:.3f})", ctx)
    ctx.trim()
    ctx.sync()
    mark("pool released", ctx)
    del model, opt
    gc.collect()
    ctx.trim()
    ctx.sync()
    mark("model dropped", ctx)
    res = {"benchmark": "driver_memory", "machine": machine_info(ctx), "argv": sys.argv[1:],
           "phases": phases, "sampled_during_steps": dm.result()}
    write_json(out_path("driver_memory", args.out), res)


if __name__ == "__main__":
    main()
