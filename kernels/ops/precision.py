"""F32: the float type every NumPy reference (kernels/ops/*/reference.py) computes in.

Looked up at call time (`precision.F32`), so a float64 gradient check can switch every family
at once: `monkeypatch.setattr(precision, "F32", np.float64)` (tests/kernels/test_model_grad.py,
tests/kernels/test_pretrain_grad.py). Not a tuning knob: the GPU kernels are float32.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
