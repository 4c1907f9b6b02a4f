"""CpuBackend's straight-through input gradient (bitlinear_backward) in each arithmetic of
BITSWARM_CPU_STE (f32, i24, i16) at the default model's shapes, N rows: ms per call and the
ratio to f32 measured in the same run, plus i16's error against the float64 product.

    .venv/bin/python benchmarks/ste_cpu.py [--rows 1024] [--threads 2] [--out FILE.json]

Needs onnxruntime and numba (the `cpu-int8` extra) for i24 / i16.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

SHAPES = [(128, 384, "k, v"), (384, 384, "q, o"), (1024, 384, "gate, up"), (384, 1024, "down")]


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2, help="BITSWARM_CPU_THREADS (the step's row split)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out")
    a = ap.parse_args()
    os.environ["BITSWARM_CPU_THREADS"] = str(a.threads)
    from bitswarm.kernels.config import TernaryLinear
    from bitswarm.kernels.ops.bitlinear import cpu
    from bitswarm.kernels.ops.threads import own_blas

    own_blas()                 # BLAS on one thread, our row split the only parallelism (as CpuBackend)

    if not cpu.int8_enabled():
        raise SystemExit("onnxruntime is not installed (pip install -e '.[cpu-int8]')")
    rng = np.random.default_rng(0)
    rows = []
    for out, inn, what in SHAPES:
        w = cpu.ternary(TernaryLinear(codes=rng.integers(-1, 2, (out, inn)).astype(np.int8),
                                      weight_scale=np.float32(1.7)))
        dy = rng.standard_normal((a.rows, out)).astype(np.float32)
        ms = {}
        for mode in ("f32", "i24", "i16"):
            os.environ["BITSWARM_CPU_STE"] = mode
            ms[mode] = _time(lambda: cpu.bitlinear_backward(dy, w), a.reps)
        got = cpu.bitlinear_backward(dy, w)
        exact = dy.astype(np.float64) @ (w.codes.astype(np.float64) / 1.7)
        err = float(np.abs(got - exact).max() / np.abs(exact).max())
        rows.append({"out": out, "in": inn, "projections": what, "ms": ms, "i16_rel_err": err})
        print(f"{out:5d} -> {inn:5d} ({what}): f32 {ms['f32']:.2f} ms, i24 {ms['i24']:.2f} "
              f"({ms['f32'] / ms['i24']:.2f}x), i16 {ms['i16']:.2f} ({ms['f32'] / ms['i16']:.2f}x); "
              f"i16 max error {err:.1e} of max|dx|", flush=True)
    os.environ.pop("BITSWARM_CPU_STE")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": a.rows, "threads": a.threads, "load_1m": os.getloadavg()[0],
                       "shapes": rows}, f, indent=1)
        print("wrote", a.out)


if __name__ == "__main__":
    main()
