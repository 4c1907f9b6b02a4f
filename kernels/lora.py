"""LoRA adapters on BitLinear projections (Hu et al. 2021, arXiv:2106.09685).

State is a flat dict of float32 arrays, the form that is checkpointed and federated:
    "layers.{i}.{proj}.lora_A": (r, in)      "layers.{i}.{proj}.lora_B": (out, r)
A starts N(0, init_std) (QVAC Fabric's default), B starts at zero, so the adapted model starts
equal to the base model.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.config import BitNetConfig, LoRAConfig

LoRAState = dict[str, np.ndarray]


def lora_key(layer: int, proj: str, which: str) -> str:
    """Flat key of one LoRA matrix; which is "A" or "B"."""
    return f"layers.{layer}.{proj}.lora_{which}"


def lora_shapes(config: BitNetConfig, lora: LoRAConfig) -> dict[str, tuple[int, int]]:
    """Expected shape of every LoRA matrix, in a fixed (sorted) key order."""
    shapes = {}
    for i in range(config.num_hidden_layers):
        for p in lora.target_modules:
            out_f, in_f = config.proj_shape(p)
            shapes[lora_key(i, p, "A")] = (lora.rank, in_f)
            shapes[lora_key(i, p, "B")] = (out_f, lora.rank)
    return dict(sorted(shapes.items()))


def init_lora(config: BitNetConfig, lora: LoRAConfig, seed: int) -> LoRAState:
    """Fresh adapter: A ~ N(0, init_std), B = 0. Same seed -> same adapter on every node."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in lora_shapes(config, lora).items():
        if key.endswith("lora_A"):
            state[key] = (rng.standard_normal(shape) * lora.init_std).astype(np.float32)
        else:
            state[key] = np.zeros(shape, np.float32)
    return state


def trainable_keys(state: LoRAState, lora: LoRAConfig) -> list[str]:
    """Keys the optimizer updates: all, or only lora_B under FFA-LoRA (freeze_A)."""
    return [k for k in state if not (lora.freeze_A and k.endswith("lora_A"))]
