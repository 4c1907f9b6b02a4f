"""Privacy accounting for repeated Gaussian releases with Renyi differential privacy.

One release of the Gaussian mechanism with L2 sensitivity C and noise N(0, (sigma C)^2) is
(alpha, alpha / (2 sigma^2))-RDP for every order alpha > 1 (Mironov 2017, "Renyi Differential
Privacy", CSF, Prop. 7); T releases compose additively (Prop. 1): T alpha / (2 sigma^2). An
RDP guarantee converts to (epsilon, delta)-DP as

    epsilon = min over alpha of  rdp(alpha) + log((alpha - 1) / alpha)
                                 - (log delta + log alpha) / (alpha - 1)

(Balle et al. 2020, "Hypothesis Testing Interpretations and Renyi Differential Privacy",
AISTATS, Thm. 21; the conversion Opacus' RDP accountant uses), minimized over a fixed grid of
orders. Every round a node publishes an update counts as a release (sampling rate 1: each
node uses all of its data every round, so no amplification by subsampling is claimed).
"""
from __future__ import annotations

import math

ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512])


def rdp_gaussian(noise_multiplier: float, releases: int, order: float) -> float:
    """RDP epsilon of `releases` Gaussian releases at `order` (Mironov 2017)."""
    return releases * order / (2.0 * noise_multiplier ** 2)


def epsilon_from_rdp(rdp: list[float], orders: tuple[float, ...], delta: float) -> float:
    """The (epsilon, delta) conversion above, minimized over `orders`."""
    best = math.inf
    for a, r in zip(orders, rdp):
        eps = r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


class GaussianRDPAccountant:
    """Counts Gaussian releases of noise multiplier sigma and reports epsilon for a delta.

    noise_multiplier: sigma > 0 (sigma = 0 is no privacy: epsilon is infinite).
    releases: releases already made (a resumed node's count).
    """

    def __init__(self, noise_multiplier: float, releases: int = 0) -> None:
        if not noise_multiplier >= 0:
            raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        self.noise_multiplier = noise_multiplier
        self.releases = releases

    def step(self) -> None:
        """One more release (one published update)."""
        self.releases += 1

    def epsilon(self, delta: float, releases: int | None = None) -> float:
        """Epsilon for `delta` (0 < delta < 1) after `releases` (default: those counted)."""
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        t = self.releases if releases is None else releases
        if t == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        rdp = [rdp_gaussian(self.noise_multiplier, t, a) for a in ORDERS]
        return epsilon_from_rdp(rdp, ORDERS, delta)
