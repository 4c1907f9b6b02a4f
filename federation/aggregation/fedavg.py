"""FedAvg: the token-weighted mean of LoRA deltas, deterministic to the bit.

FedAvg (McMahan et al. 2017, arXiv:1602.05629, Alg. 1): the new global update is the mean of
client updates weighted by n_k, the amount of data each client trained on (here: tokens):
    agg = sum_k n_k * delta_k / sum_k n_k.
Every node aggregates the same set of decoded deltas and must get the same bits, whatever the
order in which updates arrived: contributions are summed in a fixed order (sorted by peer ID),
in float64, and cast to float32 once at the end.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import AggregationRule, Contribution


class FedAvg(AggregationRule):
    """The default rule: `fedavg` of the round's contributions."""

    name = "fedavg"

    def aggregate(self, round: int, contributions: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return fedavg(contributions)


def fedavg(updates: Sequence[Contribution]) -> dict[str, np.ndarray]:
    """Token-weighted mean of the deltas -> name -> float32 array (same shapes).

    Bit-identical for any permutation of `updates`. Raises ValueError on: no updates, duplicate
    peer IDs, tokens that are not non-negative ints, zero total tokens, keys or shapes that
    differ between updates, non-finite values.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    ordered = sorted(updates, key=lambda u: u.peer_id)
    ids = [u.peer_id for u in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate peer IDs in fedavg input: {ids}")
    for u in ordered:
        if isinstance(u.tokens, bool) or not isinstance(u.tokens, (int, np.integer)) or u.tokens < 0:
            raise ValueError(f"tokens of {u.peer_id} must be an int >= 0, got {u.tokens!r}")
    total = sum(int(u.tokens) for u in ordered)
    if total == 0:
        raise ValueError("fedavg: total tokens is zero")
    ref = ordered[0]
    shapes = {k: np.shape(v) for k, v in ref.delta.items()}
    for u in ordered[1:]:
        if set(u.delta) != set(shapes):
            diff = sorted(set(u.delta) ^ set(shapes))[:4]
            raise ValueError(f"delta keys of {u.peer_id} differ from {ref.peer_id}'s: {diff}")
        for k, shape in shapes.items():
            if np.shape(u.delta[k]) != shape:
                raise ValueError(f"{u.peer_id}: {k} has shape {np.shape(u.delta[k])}, "
                                 f"expected {shape}")
    out = {}
    for k in sorted(shapes):
        acc = np.zeros(shapes[k], dtype=np.float64)
        for u in ordered:
            if u.tokens:
                # float32 -> float64 is exact and int tokens <= 2^53 are exact: each term is
                # correctly rounded, and the fixed order fixes the rounding of the sum.
                acc += float(u.tokens) * np.asarray(u.delta[k], dtype=np.float64)
        acc /= float(total)
        if not np.isfinite(acc).all():
            raise ValueError(f"fedavg: non-finite result for {k}")
        out[k] = acc.astype(np.float32)
    return out
