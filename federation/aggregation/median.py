"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML; Flower's FedMedian): each coordinate of the aggregate is the
median of that coordinate over the round's updates, unweighted (token claims do not count).
Tolerates any minority of arbitrary updates per coordinate. With an even count, the mean of
the two middle values (NumPy's median), in float64."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import AggregationRule, Contribution
from .vectors import stack, unstack


def coordinate_median(updates: Sequence[Contribution]) -> dict[str, np.ndarray]:
    """name -> float32 median over updates. Raises ValueError (see vectors.stack)."""
    ordered, x = stack(updates)
    return unstack(np.median(x, axis=0), ordered[0])


class CoordinateMedian(AggregationRule):
    """`coordinate_median` of the round's contributions."""

    name = "median"

    def aggregate(self, round: int, contributions: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return coordinate_median(contributions)
