"""Local LoRA training: the steps a node runs between federated rounds.

Blocking (NumPy or GPU work): the runtime calls `step` through trio.to_thread.run_sync with a
CapacityLimiter(1), so the event loop stays free for networking.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.lora import LoRAState, trainable_keys
from bitswarm.kernels.model import BitNetModel
from bitswarm.kernels.optim import AdamW, AdamWConfig
from bitswarm.node.data import TrainSampler


class LocalTrainer:
    """Owns the model's adapter, the optimizer and the local data sampler."""

    def __init__(self, model: BitNetModel, sampler: TrainSampler, *, lr: float, batch_size: int) -> None:
        self.model = model
        self.sampler = sampler
        self.batch_size = batch_size
        self.lr = lr
        self.optim = AdamW(model.be, AdamWConfig(lr=lr))

    def set_adapter(self, state: LoRAState) -> None:
        """Replace the adapter (the round's global adapter). Optimizer moments are kept: they are
        local state, and every round starts from the same global values on all nodes."""
        self.model.set_lora(state)

    def roll_back(self, state: LoRAState) -> float:
        """After a diverged step: set `state`, drop the optimizer moments (they carry the
        divergence) and halve the learning rate; returns the new rate."""
        self.model.set_lora(state)
        self.lr /= 2
        self.optim = AdamW(self.model.be, AdamWConfig(lr=self.lr))
        return self.lr

    def adapter(self) -> LoRAState:
        return self.model.get_lora()

    def step(self) -> tuple[float, int]:
        """One AdamW step on a fresh batch -> (mean loss in nats/token, predicted tokens)."""
        ids, tgt = self.sampler.batch(self.batch_size)
        loss, count, grads = self.model.loss_and_grads(ids, tgt)
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss}; lower --lr")
        keys = set(trainable_keys(self.model.lora, self.model.lora_cfg))
        self.optim.step(self.model.lora, {k: g for k, g in grads.items() if k in keys})
        return loss, count
