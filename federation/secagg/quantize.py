"""Fixed-point encoding of a bounded, weighted update as integers mod 2^32 (Bonawitz et al.
2017 sum vectors in Z_R; here R = 2^32, so masking is uint32 wrap-around arithmetic).

A member with FedAvg weight w (its tokens over the cohort's, so the cohort's weights sum to
1) encodes q = round-half-even(w * clamp(x, -R, R) * S) as two's-complement uint32, with
R = `range_` and the scale S = 2^30 / R. Then |sum of the cohort's q| <= 2^30 + n/2 < 2^31
for n <= 256 members: the sum read as int32 never wraps. One step is R / 2^30; the sum's
error is at most n / 2 steps before dividing by the survivors' weight.
"""
from __future__ import annotations

import numpy as np

SCALE_BITS = 30
MAX_MEMBERS = 256


class Quantizer:
    """Fixed point for values in [-range_, range_] (float, > 0, finite).

    encode: float vector (n,) any float dtype, weight in [0, 1] -> uint32 (n,).
    decode: uint32 sum (n,) -> float64 (n,), the weighted sum of the encoded values.
    """

    def __init__(self, range_: float) -> None:
        if not (isinstance(range_, (int, float)) and np.isfinite(range_) and range_ > 0):
            raise ValueError(f"quantizer range must be a finite number > 0, got {range_!r}")
        self.range = float(range_)
        self.scale = float(2**SCALE_BITS) / self.range

    @property
    def step(self) -> float:
        """One integer step in the update's units."""
        return 1.0 / self.scale

    def encode(self, x: np.ndarray, weight: float) -> np.ndarray:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight!r}")
        x = np.clip(np.asarray(x, np.float64), -self.range, self.range)
        q = np.rint(x * (weight * self.scale)).astype(np.int64)
        return q.astype(np.int32).view(np.uint32)

    def decode(self, total: np.ndarray) -> np.ndarray:
        total = np.asarray(total, np.uint32)
        return total.view(np.int32).astype(np.float64) / self.scale
