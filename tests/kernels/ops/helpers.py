"""Random inputs shared by the op-family tests."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.config import TernaryLinear

F32 = np.float32


def rnd(rng, *shape, scale=1.0):
    """float32 normal samples of `shape`, times scale."""
    return (rng.standard_normal(shape) * scale).astype(F32)


def ternary(rng, out, k, ws=1.7):
    """A random TernaryLinear (out, k) with weight_scale ws."""
    return TernaryLinear(rng.integers(-1, 2, (out, k)).astype(np.int8), F32(ws))
