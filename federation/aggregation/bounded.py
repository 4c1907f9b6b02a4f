"""Bounded FedAvg: no single update can dominate a round, whatever it claims.

Before the token-weighted mean (fedavg), every contribution is bounded against the round's own
honest-majority statistics, so nodes that hold the same contributions still get the same bits:
  * its L2 norm (over all tensors, float64) is clipped to `norm_factor` x the LOWER median of
    the round's norms (index (n-1)//2 of the sorted norms: with n = 2 the smaller one), i.e. a
    scaled update (x1e6, x1e12) is shrunk to at most a few honest updates' size (norm clipping as
    in DP-FedAvg, McMahan et al. 2018; centred on the median as robust aggregation rules are,
    Yin et al. 2018);
  * its token count, the FedAvg weight, is capped at `token_factor` x the lower median of the
    round's positive token counts, so a claim of 1e12 tokens weighs like an ordinary update.
With a minority of attackers the lower median is an honest value. A lone contributor, or a round
of equal updates, is returned unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import AggregationRule, Contribution
from .fedavg import fedavg

NORM_FACTOR = 3.0
TOKEN_FACTOR = 2.0


def _lower_median(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[(len(s) - 1) // 2]


def bound_contributions(updates: Sequence[Contribution], *, norm_factor: float = NORM_FACTOR,
                        token_factor: float = TOKEN_FACTOR) -> list[Contribution]:
    """The updates with norms clipped and token counts capped (module docstring), in peer-ID
    order. Raises ValueError for no updates or non-positive factors."""
    if not updates:
        raise ValueError("bounded aggregation needs at least one update")
    if not (norm_factor > 0 and token_factor > 0):
        raise ValueError(f"factors must be > 0, got {norm_factor}, {token_factor}")
    ordered = sorted(updates, key=lambda u: u.peer_id)
    norms = [float(np.sqrt(sum(float(np.sum(np.square(np.asarray(v, np.float64))))
                               for v in u.delta.values()))) for u in ordered]
    max_norm = norm_factor * _lower_median(norms)
    # over positive claims only: a peer claiming 0 tokens must not zero everyone's weight
    claims = [int(u.tokens) for u in ordered if u.tokens]
    max_tokens = max(1, int(token_factor * _lower_median(claims))) if claims else 0
    out = []
    for u, n in zip(ordered, norms):
        delta = u.delta
        if n > max_norm:
            scale = max_norm / n                        # float64; 0 when the median norm is 0
            delta = {k: (np.asarray(v, np.float64) * scale).astype(np.float32)
                     for k, v in u.delta.items()}
        out.append(Contribution(u.peer_id, min(int(u.tokens), max_tokens) if u.tokens else 0, delta))
    return out


class BoundedFedAvg(AggregationRule):
    """FedAvg over `bound_contributions` (the node's default rule)."""

    name = "bounded-fedavg"

    def __init__(self, norm_factor: float = NORM_FACTOR, token_factor: float = TOKEN_FACTOR) -> None:
        self.norm_factor, self.token_factor = norm_factor, token_factor

    def aggregate(self, round: int, contributions: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return fedavg(bound_contributions(contributions, norm_factor=self.norm_factor,
                                          token_factor=self.token_factor))
