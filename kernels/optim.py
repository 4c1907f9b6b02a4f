"""AdamW on the LoRA parameters (Loshchilov & Hutter 2019; torch.optim.AdamW semantics).

The moments live on the same backend as the parameters; each step is one `adamw_` kernel per
LoRA matrix, no host round trip.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np

from bitswarm.kernels.backend import Backend


@dataclass
class AdamWConfig:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01


class AdamW:
    """Keeps first/second moments per parameter key; `step` updates params in place.

    decays(key) -> bool says which parameters get weight decay (default: all; pretraining
    exempts norm weights, as is usual for transformers)."""

    def __init__(self, backend: Backend, config: AdamWConfig,
                 decays: Callable[[str], bool] | None = None) -> None:
        self.be = backend
        self.cfg = config
        self.decays = decays or (lambda key: True)
        self.t = 0
        self.state: dict[str, tuple[Any, Any]] = {}

    def reset(self) -> None:
        """Forget moments (e.g. after the global adapter is replaced by an aggregate)."""
        self.t = 0
        self.state.clear()

    def step(self, params: dict[str, Any], grads: dict[str, Any], lr: float | None = None) -> None:
        """One step for every key in grads (params lacking a grad stay frozen)."""
        self.t += 1
        c = self.cfg
        for k, g in grads.items():
            p = params[k]
            if k not in self.state:
                self.state[k] = (self.be.zeros_like(p), self.be.zeros_like(p))
            m, v = self.state[k]
            self.be.adamw_(p, g, m, v, step=self.t, lr=c.lr if lr is None else lr,
                           beta1=c.beta1, beta2=c.beta2, eps=c.eps,
                           weight_decay=c.weight_decay if self.decays(k) else 0.0)

    def state_dict(self) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """(step count t, {key: (m, v) float32 host arrays}) for a checkpoint; one download
        for all moments."""
        keys = list(self.state)
        flat = self.be.numpy_many([t for k in keys for t in self.state[k]])
        return self.t, {k: (np.asarray(flat[2 * i], np.float32),
                            np.asarray(flat[2 * i + 1], np.float32)) for i, k in enumerate(keys)}

    def load_state_dict(self, t: int, moments: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Restore what `state_dict` returned (moments uploaded to the backend)."""
        self.t = int(t)
        self.state = {k: (self.be.tensor(m), self.be.tensor(v)) for k, (m, v) in moments.items()}
