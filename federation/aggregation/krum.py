"""Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS; Flower's Krum strategy). With n updates of which at most f are
Byzantine, each update's score is the sum of squared L2 distances to its n - f - 2 nearest
other updates; the m updates with the lowest scores are averaged, unweighted. Defaults: the
largest f with n > 2f + 2 (f = 0 below 4 updates), m = n - f. Ties are broken by peer ID, so
every node selects the same updates."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import AggregationRule, Contribution
from .vectors import stack, unstack


def default_f(n: int) -> int:
    """Largest f with n > 2f + 2 (0 when n < 4)."""
    return max(0, (n - 3) // 2)


def multi_krum(updates: Sequence[Contribution], f: int | None = None,
               m: int | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """(name -> float32 mean of the selected updates, selected peer IDs sorted). Raises
    ValueError for f or m out of range or bad updates (see vectors.stack)."""
    ordered, x = stack(updates)
    n = len(ordered)
    f = default_f(n) if f is None else f
    m = n - f if m is None else m
    if f < 0 or (f > 0 and n <= 2 * f + 2) or not 1 <= m <= n:
        raise ValueError(f"multi-Krum needs n > 2f + 2 and 1 <= m <= n, got n={n}, f={f}, m={m}")
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    k = max(0, n - f - 2)
    scores = []
    for i in range(n):
        others = np.sort(np.delete(d2[i], i))
        scores.append(float(others[:k].sum()))
    chosen = sorted(range(n), key=lambda i: (scores[i], ordered[i].peer_id))[:m]
    chosen.sort()
    return unstack(x[chosen].mean(axis=0), ordered[0]), [ordered[i].peer_id for i in chosen]


class MultiKrum(AggregationRule):
    """`multi_krum` of the round's contributions (f, m: None = the defaults)."""

    name = "multi-krum"

    def __init__(self, f: int | None = None, m: int | None = None) -> None:
        self.f, self.m = f, m

    def aggregate(self, round: int, contributions: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return multi_krum(contributions, self.f, self.m)[0]
