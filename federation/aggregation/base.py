"""The aggregation seam: a rule turns the round's decoded updates into one aggregate delta.

Shaped after Flower's `Strategy.aggregate_fit(server_round, results, failures)`: a rule is a
small class with one method, injected into the round (`RoundCoordinator(aggregation=...)`);
the round fetches, verifies and decodes, the rule only combines. As with Flower's
`FedMedian(FedAvg)` calling a pure `aggregate_median`, a rule's arithmetic lives in a pure
function tested beside it.

A new rule (median, trimmed mean, Krum, norm bounding around another rule, ...) is one
subclass in its own module, one line in `registry.AGGREGATION_RULES`, and its test;
`tests/federation/aggregation/test_registry.py` already checks every registered rule for
order invariance (bit-exact), shapes/dtypes and a lone contributor.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Contribution:
    """One peer's update: peer_id (base58), tokens (int >= 0, the FedAvg weight),
    delta (name -> float32 array; e.g. lora_A (r, in), lora_B (out, r))."""

    peer_id: str
    tokens: int
    delta: Mapping[str, np.ndarray]


class AggregationRule(ABC):
    """Combines the decoded deltas of one round.

    Contract: every node holding the same contributions must get the same bits, whatever the
    order they arrived in (sort by peer_id, accumulate in a fixed order); the result has the
    contributions' keys and shapes, float32. Raises ValueError for inputs it cannot combine
    (the round's own checks make that a local bug, not a peer's doing).
    """

    name: ClassVar[str]           # registry key

    @abstractmethod
    def aggregate(self, round: int, contributions: Sequence[Contribution]) -> dict[str, np.ndarray]:
        """Round `round`'s contributions (>= 1, own included) -> name -> float32 array."""
