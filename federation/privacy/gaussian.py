"""The Gaussian mechanism on one LoRA update (DP-FedAvg, McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models", ICLR, Alg. 1 with the noise added by each
client): the update's L2 norm over all its tensors is clipped to C, then independent Gaussian
noise of standard deviation sigma x C is added to every coordinate. Each release then has
L2 sensitivity C for the node's whole data set (user-level DP)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def clip_and_noise(delta: Mapping[str, np.ndarray], clip_norm: float, noise_multiplier: float,
                   rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float]:
    """(name -> float32 clipped + noised update, L2 norm before clipping).

    clip_norm C > 0; noise_multiplier sigma >= 0 (0: clipping only); rng: the noise source
    (numpy Generator; seed it from the OS for real privacy). Raises ValueError for bad
    parameters or non-finite input."""
    if not (np.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip norm must be > 0, got {clip_norm}")
    if not (np.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    arrays = {k: np.asarray(v, np.float64) for k, v in delta.items()}
    if not all(np.isfinite(v).all() for v in arrays.values()):
        raise ValueError("update has non-finite values")
    norm = float(np.sqrt(sum(float(np.sum(v * v)) for v in arrays.values())))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    out = {}
    for k in sorted(arrays):                       # fixed order: reproducible from one seed
        noised = arrays[k] * scale
        if std > 0:
            noised = noised + rng.normal(0.0, std, size=noised.shape)
        out[k] = noised.astype(np.float32)
    return out, norm
