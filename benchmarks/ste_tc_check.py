"""The int STE input gradient on int8 tensor cores against the dot4I8Packed kernels at 2B-4T's
shapes (N = 2048 tokens, the projections' (OUT, K), each in a packed group): whether dx's bits
are identical (max |diff|, max ulps, share of elements differing), for i8 and i16, without and
with acc, plus each call's median time (rows + GEMM, synced: a launch-bound upper bound).

    python3 benchmarks/ste_tc_check.py [N]     (a GPU with Dawn's int8 subgroup matrices)
    python3 benchmarks/ste_tc_check.py step    (one 2B-4T 16 x 128 loss_and_grads, tc on/off)

Exit status 1 when a case without acc differs: those must be bit-identical. With acc a driver
may fuse the scaling and the add into one FMA in one shader and not the other (1 ulp).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))

from bitswarm.kernels.gpu_backend import GpuBackend
from bitswarm.kernels.ops.bitlinear import gpu as blg
from bitswarm.kernels.config import TernaryLinear

SHAPES = [("q/o", 2560, 2560), ("k/v", 640, 2560), ("gate/up", 6912, 2560), ("down", 2560, 6912)]


def main() -> int:
    be = GpuBackend()
    rng = np.random.default_rng(0)
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    rows = []
    for name, OUT, K in SHAPES:
        codes = rng.integers(-1, 2, (OUT, K)).astype(np.int8)
        for ws, scale, use_acc in ((0.37, 1.0, False), (62.5, 1e-6, True)):
            w = be.ternary_group([TernaryLinear(rng.integers(-1, 2, (64, K)).astype(np.int8),
                                                np.float32(0.5)),
                                  TernaryLinear(codes, np.float32(ws))])[1]
            dyh = (rng.standard_normal((N, OUT)) * scale).astype(np.float32)
            dyh[5] = 0.0
            dy = be.tensor(dyh)
            acc = be.tensor((rng.standard_normal((N, K)) * scale).astype(np.float32)) if use_acc else None
            for terms in (1, 2):
                out = {}
                for tc in (True, False):
                    be.ste_tc = tc
                    assert blg.ste_tc_ok(be, N, K, OUT, terms) == tc
                    dx = be.numpy(be.bitlinear_backward_int(dy, w, acc, terms=terms))
                    times = []
                    for _ in range(7):
                        be.ctx.sync()
                        t0 = time.perf_counter()
                        be.bitlinear_backward_int(dy, w, acc, terms=terms)
                        be.ctx.sync()
                        times.append(time.perf_counter() - t0)
                    out[tc] = (dx, float(np.median(times)))
                be.ste_tc = None
                a, b = out[True][0], out[False][0]
                ulps = np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))
                row = dict(shape=name, N=N, OUT=OUT, K=K, terms=terms, weight_scale=ws,
                           acc=use_acc, identical=bool(np.array_equal(a.view(np.int32), b.view(np.int32))),
                           max_abs_diff=float(np.max(np.abs(a - b))), max_ulps=int(ulps.max()),
                           frac_differing=float(np.mean(ulps > 0)),
                           tc_ms=1e3 * out[True][1], dp4a_ms=1e3 * out[False][1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    # without acc the bits must match; with it, a driver may fuse the add (FMA) in one shader
    return 0 if all(r["identical"] or r["acc"] for r in rows) else 1


def step_compare(model_name: str = "2b4t", batch_size: int = 16) -> int:
    """One loss_and_grads of train_step's model at batch_size x 128 with the tensor-core STE
    on and off: the LoRA gradients' bits, key by key."""
    import train_step as ts
    ts.B = batch_size
    be = GpuBackend()
    ts._SharedCodesGpu.install(be)             # as train_step does
    model, _ = ts.setup_ours(be, ts.CONFIGS[model_name], "qkvo")
    ids, tg = ts.batch(ts.CONFIGS[model_name], 1)
    out = {}
    for run, tc in (("tc", True), ("tc again", True), ("dp4a", False), ("dp4a again", False)):
        be.ste_tc = tc
        loss, _, grads = model.loss_and_grads(ids, tg)
        out[run] = (loss, {k: be.numpy(v) for k, v in grads.items()})
    bad = 0
    for x, y in (("tc", "tc again"), ("dp4a", "dp4a again"), ("tc", "dp4a")):
        print(x, "vs", y, "loss", out[x][0], out[y][0])
        n = 0
        for k in sorted(out[x][1]):
            a, b = out[x][1][k], out[y][1][k]
            if not np.array_equal(a.view(np.int32), b.view(np.int32)):
                n += 1
                if n <= 6:
                    print("  ", k, "max|diff|", float(np.max(np.abs(a - b))),
                          "max|g|", float(np.max(np.abs(b))))
        print("  keys differing:", n, "of", len(out[x][1]))
        last = max(int(k.split(".")[1]) for k in out[x][1] if k.startswith("layers."))
        for k in sorted(k for k in out[x][1] if k.startswith(f"layers.{last}.")):
            a, b = out[x][1][k], out[y][1][k]
            print("   last layer", k, "max|diff|", float(np.max(np.abs(a - b))))
        bad += n
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(step_compare() if sys.argv[1:2] == ["step"] else main())
