"""Per-phase times of the node loop vs the benchmark step (125M, 16 x 128) on the GPU."""
import sys, time, statistics
sys.path.insert(0, "benchmarks")
import numpy as np
import train_step
from shapes import CONFIGS
from pathlib import Path
from bitswarm.kernels.backend import select_backend
from bitswarm.kernels.config import LoRAConfig
from bitswarm.kernels.lora import init_lora, trainable_keys
from bitswarm.kernels.model import BitNetModel
from bitswarm.node.data import TrainSampler, find_text_files, split_train_heldout, tokenize
from bitswarm.node.models import load_model
from bitswarm.node.trainer import LocalTrainer
be = select_backend("gpu")
loaded = load_model(None)
weights = train_step.fast_weights(CONFIGS["125m"], 0)
lcfg = LoRAConfig(rank=8, alpha=16.0, target_modules=train_step.TARGETS["qkvo"])
model = BitNetModel(weights, be, lcfg)
train, _ = split_train_heldout(find_text_files(Path("docs")))
docs = [tokenize(loaded.tokenizer, f) for f in train]
V = weights.config.vocab_size
for d in docs:
    d.ids = np.asarray(d.ids) % V
sampler = TrainSampler(docs, 128, seed=0)
trainer = LocalTrainer(model, sampler, lr=1e-3, batch_size=16)
trainer.set_adapter(init_lora(weights.config, lcfg, 0))
ph = {"sample": [], "loss_and_grads": [], "optim+sync": [], "step": []}
fixed = sampler.batch(16)
for mode in ("real", "fixed ids"):
    for k in ph: ph[k].clear()
    for s in range(14):
        t0 = time.perf_counter()
        ids, tgt = sampler.batch(16) if mode == "real" else fixed
        t1 = time.perf_counter()
        loss, count, grads = model.loss_and_grads(ids, tgt)
        t2 = time.perf_counter()
        keys = set(trainable_keys(model.lora, model.lora_cfg))
        trainer.optim.step(model.lora, {k: g for k, g in grads.items() if k in keys})
        del grads
        be.ctx.sync()
        t3 = time.perf_counter()
        if s >= 4:
            for k, v in (("sample", t1 - t0), ("loss_and_grads", t2 - t1), ("optim+sync", t3 - t2), ("step", t3 - t0)):
                ph[k].append(v * 1e3)
    print(mode, {k: round(statistics.median(v), 2) for k, v in ph.items()}, "count", count, "unique ids", len(np.unique(ids)))
train_step.B, train_step.T = 16, 128
print("bench", train_step.run_ours(be, weights.config, "qkvo", 8, 2)["step_s"] * 1e3, "ms")
