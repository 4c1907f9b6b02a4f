"""Centered clipping (Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine
Robust Optimization", ICML, Eq. 2): starting from a centre v, repeat L times

    v <- v + (1/n) sum_i (x_i - v) * min(1, tau / ||x_i - v||)

so no update moves the aggregate by more than tau / n per iteration, however large it is.
The paper starts from the previous round's aggregate (momentum); a round here is stateless (a
node that joins late must compute the same bits), so v starts at the coordinate-wise median,
and tau is the round's lower median of ||x_i - v_0|| (clipping only the outliers). Unweighted,
float64, updates in peer-ID order."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import AggregationRule, Contribution
from .vectors import stack, unstack

ITERATIONS = 3


def centered_clipping(updates: Sequence[Contribution], *, iterations: int = ITERATIONS,
                      tau: float | None = None) -> dict[str, np.ndarray]:
    """name -> float32 centred-clipping aggregate. Raises ValueError (see vectors.stack)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    ordered, x = stack(updates)
    v = np.median(x, axis=0)
    if tau is None:
        dist = np.sort(np.linalg.norm(x - v, axis=1))
        tau = float(dist[(len(dist) - 1) // 2])
    for _ in range(iterations):
        step = np.zeros_like(v)
        for xi in x:                                   # fixed order: peer ID
            diff = xi - v
            norm = float(np.linalg.norm(diff))
            step += diff * (min(1.0, tau / norm) if norm > 0 else 1.0)
        v = v + step / len(x)
    return unstack(v, ordered[0])


class CenteredClipping(AggregationRule):
    """`centered_clipping` of the round's contributions."""

    name = "centered-clipping"

    def __init__(self, iterations: int = ITERATIONS) -> None:
        self.iterations = iterations

    def aggregate(self, round: int, contributions: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return centered_clipping(contributions, iterations=self.iterations)
