"""Differential privacy of a node's own updates (DP-FedAvg, McMahan et al. 2018).

    gaussian.py    clip_and_noise: clip an update to L2 norm C, add N(0, (sigma C)^2) noise
    accountant.py  GaussianRDPAccountant: epsilon after T rounds for a given delta
"""
from .accountant import GaussianRDPAccountant
from .gaussian import clip_and_noise

__all__ = ["GaussianRDPAccountant", "clip_and_noise"]
