"""Shared fixtures for kernel tests: one GPU backend per session (lavapipe on CI), and the
llm.c-style comparison helper `assert_close_to_ref` (as the `close` fixture)."""
from __future__ import annotations

import numpy as np
import pytest


def assert_close_to_ref(got, ref, atol: float, rtol: float, name: str = "", show: int = 5) -> tuple[float, float]:
    """Assert |got - ref| <= atol + rtol*|ref| elementwise (llm.c validate_result), printing the
    first mismatches. Shapes must match; NaN/inf must match exactly. Returns (max abs error,
    max abs error / max |ref|) for reporting."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    fin = np.isfinite(r)
    assert np.array_equal(np.isfinite(g), fin) and np.array_equal(g[~fin], r[~fin]), \
        f"{name}: non-finite values differ"
    err = np.abs(g - r)
    bad = np.argwhere(err > atol + rtol * np.abs(r))
    if len(bad):
        lines = [f"{name}: {len(bad)} of {r.size} values out of tolerance (atol={atol}, rtol={rtol})"]
        for idx in bad[:show]:
            idx = tuple(idx)
            lines.append(f"  at {idx}: got {g[idx]!r} ref {r[idx]!r} |diff| {err[idx]:.3e}")
        raise AssertionError("\n".join(lines))
    max_abs = float(err.max()) if err.size else 0.0
    scale = float(np.abs(r[fin]).max()) if fin.any() else 0.0
    max_rel = max_abs / scale if scale > 0 else 0.0      # normwise: max|err| / max|ref|
    print(f"{name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e}")
    return max_abs, max_rel


@pytest.fixture
def close():
    return assert_close_to_ref


@pytest.fixture(scope="session")
def gpu():
    """A GpuBackend on whatever adapter wgpu finds (lavapipe counts), with the fp32 STE input
    gradient, the reference path, on every adapter (BITSWARM_GPU_STE=auto picks f16 on an H200:
    the f16 tests ask for it explicitly). Skipped only when wgpu has no adapter at all."""
    try:
        import wgpu  # noqa: F401
    except ImportError as e:  # wgpu is a dependency; this only guards broken installs
        pytest.skip(f"wgpu not importable: {e}")
    from bitswarm.kernels.device import Context
    from bitswarm.kernels.gpu_backend import GpuBackend
    try:
        ctx = Context()
    except RuntimeError as e:
        pytest.skip(f"no wgpu adapter on this machine: {e}")
    return GpuBackend(ctx, ste="f32")
