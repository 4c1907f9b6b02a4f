"""CpuBackend's elementwise ops: the reference's arithmetic (reference.py beside this file) in
place, with no float32 copy of float32 results. Bit-identical to the reference (doubling is
exact, so 2*r*u*dh may be grouped as (r*u*dh)*2). Floats are precision.F32.
"""
from __future__ import annotations

import numpy as np


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b, same shapes (a new array)."""
    return np.add(a, b)


def relu2_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """h = relu(g)^2 * u, (N, I)."""
    r = np.maximum(g, 0)
    r *= r
    r *= u
    return r


def relu2_gate_backward(dh: np.ndarray, g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dg, du) = (2*relu(g)*u*dh, relu(g)^2*dh)."""
    r = np.maximum(g, 0)
    du = np.multiply(r, r)
    du *= dh
    r *= u
    r *= dh
    r *= 2
    return r, du
