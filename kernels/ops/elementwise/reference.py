"""NumPy reference of the elementwise ops: add (add.wgsl) and BitNet's gated squared ReLU with its
backward (relu2_gate.wgsl; transformers ACT2FN['relu2']). Floats are precision.F32; pure.
"""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.ops import precision as prec


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise a + b, same shapes."""
    return (a + b).astype(prec.F32)


def relu2_gate(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """h = relu(g)^2 * u (BitNet's MLP activation, transformers ACT2FN['relu2']). (N, I)."""
    r = np.maximum(g, 0)
    return (r * r * u).astype(prec.F32)


def relu2_gate_backward(dh: np.ndarray, g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dg, du) = (2*relu(g)*u*dh, relu(g)^2*dh)."""
    r = np.maximum(g, 0)
    return (2 * r * u * dh).astype(prec.F32), (r * r * dh).astype(prec.F32)
