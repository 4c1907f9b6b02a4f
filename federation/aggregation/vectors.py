"""Updates as vectors: the rules that compare whole updates (Krum's distances, centered
clipping's norms) or coordinates (median, trimmed mean) see each contribution as one float64
vector, its tensors concatenated in sorted name order, rows in peer-ID order."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Contribution


def stack(updates: Sequence[Contribution]) -> tuple[list[Contribution], np.ndarray]:
    """(updates sorted by peer ID, float64 matrix (n, d)). Raises ValueError for no updates,
    duplicate peer IDs, keys/shapes that differ, or non-finite values."""
    if not updates:
        raise ValueError("aggregation needs at least one update")
    ordered = sorted(updates, key=lambda u: u.peer_id)
    ids = [u.peer_id for u in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate peer IDs: {ids}")
    names = sorted(ordered[0].delta)
    shapes = {k: np.shape(ordered[0].delta[k]) for k in names}
    rows = []
    for u in ordered:
        if sorted(u.delta) != names or any(np.shape(u.delta[k]) != shapes[k] for k in names):
            raise ValueError(f"update of {u.peer_id} has other keys or shapes")
        rows.append(np.concatenate([np.asarray(u.delta[k], np.float64).ravel() for k in names]))
    x = np.stack(rows)
    if not np.isfinite(x).all():
        raise ValueError("non-finite values in an update")
    return ordered, x


def unstack(vector: np.ndarray, like: Contribution) -> dict[str, np.ndarray]:
    """Split a (d,) vector back into `like`'s tensors (sorted names), float32."""
    out, at = {}, 0
    for k in sorted(like.delta):
        shape = np.shape(like.delta[k])
        n = int(np.prod(shape))
        out[k] = vector[at:at + n].reshape(shape).astype(np.float32)
        at += n
    return out
