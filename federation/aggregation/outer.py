"""The outer optimizer: how a round's aggregate moves the global adapter (the global step).

Without one, G_{r+1} = G_r + aggregate (FedAvg's server step). `NesterovOuter` is DiLoCo's
outer step (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of
Language Models", arXiv:2311.08105): the averaged pseudo-gradient -aggregate goes through SGD
with Nesterov momentum (PyTorch's `SGD(nesterov=True)` formulation), which lets many local steps
per round pay off:

    m_{r+1} = mu * m_r + aggregate
    G_{r+1} = G_r + lr * (aggregate + mu * m_{r+1})

With lr = 1 and mu = 0 this is the plain step. The momentum m is part of the swarm's global
state: it is kept under `outer.momentum.<name>` beside the adapter tensors, hashed with them
(state_hash) and served with them by state sync, so every node that adopts the same round
records holds the same m, and a node that catches up receives it. All arithmetic is float32
in a fixed order, so the same inputs give the same bits on every node.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

MOMENTUM_PREFIX = "outer.momentum."


class NesterovOuter:
    """DiLoCo's outer Nesterov step. lr: outer learning rate (> 0); momentum: mu in [0, 1).
    Raises ValueError for values outside those ranges."""

    def __init__(self, lr: float = 0.7, momentum: float = 0.9) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= 10):
            raise ValueError(f"outer lr must be in (0, 10], got {lr!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"outer momentum must be in [0, 1), got {momentum!r}")
        self.lr, self.momentum = float(lr), float(momentum)

    @property
    def name(self) -> str:
        """The suffix peers must share (it joins the aggregation rule's name on the wire)."""
        return f"nesterov(lr={self.lr:g},mu={self.momentum:g})"

    def state_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Shapes of the optimizer state for adapter tensors `shapes`."""
        return {MOMENTUM_PREFIX + k: tuple(s) for k, s in shapes.items()}

    def step(self, state: Mapping[str, np.ndarray],
             aggregate: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """state: adapter tensors plus their `outer.momentum.*` (float32); aggregate: the
        round's rule result (adapter keys). Returns the next state (same keys, float32)."""
        lr, mu = np.float32(self.lr), np.float32(self.momentum)
        out = {}
        for k, g in aggregate.items():
            m = (mu * state[MOMENTUM_PREFIX + k] + g).astype(np.float32)
            out[MOMENTUM_PREFIX + k] = m
            out[k] = (state[k] + lr * (g + mu * m)).astype(np.float32)
        return out
