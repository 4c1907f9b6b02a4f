"""Coordinate-wise trimmed mean (Yin et al. 2018, ICML; Flower's FedTrimmedAvg): per
coordinate, drop the floor(beta * n) largest and smallest values of the round's updates and
average the rest, unweighted, in float64. Tolerates up to floor(beta * n) arbitrary updates."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import AggregationRule, Contribution
from .vectors import stack, unstack

BETA = 0.2


def trimmed_mean(updates: Sequence[Contribution], beta: float = BETA) -> dict[str, np.ndarray]:
    """name -> float32 trimmed mean. Raises ValueError for beta outside [0, 0.5) or bad
    updates (see vectors.stack)."""
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    ordered, x = stack(updates)
    k = int(np.floor(beta * len(ordered)))
    s = np.sort(x, axis=0)
    return unstack(s[k:len(ordered) - k].mean(axis=0), ordered[0])


class TrimmedMean(AggregationRule):
    """`trimmed_mean` with `beta` (default 0.2) of the round's contributions."""

    name = "trimmed-mean"

    def __init__(self, beta: float = BETA) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def aggregate(self, round: int, contributions: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return trimmed_mean(contributions, self.beta)
