"""WGSL peak throughput on this adapter: dot4I8Packed (int8 dp4a) and fp32 FMA.

Register-only loops (no memory traffic inside the loop): every invocation keeps 8 independent
accumulator chains and runs ITERS iterations; the result is stored so nothing is dead code.
    dp4a: acc_i = dot4I8Packed(bitcast<u32>(acc_i), b_i) + acc_i   -> 8 ops per call (4 mul, 4 add)
    fma:  acc_i = fma(acc_i, a, b) on vec4<f32>                    -> 8 flops per call
These are lower bounds of the hardware peak (what a WGSL kernel can reach through naga and the
driver), used as the denominator of "fraction of peak" in kernels.py.

    python benchmarks/peak.py [--quick] [--out PATH]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # sibling modules
from common import machine_info, out_path, parser, time_gpu, write_json  # noqa: E402

DP4A = """
struct P { iters: u32, seed: u32 }
@group(0) @binding(0) var<storage, read_write> out: array<i32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    var a0 = i32(i ^ p.seed); var a1 = a0 + 1; var a2 = a0 + 2; var a3 = a0 + 3;
    var a4 = a0 + 4; var a5 = a0 + 5; var a6 = a0 + 6; var a7 = a0 + 7;
    let b0 = p.seed * 3u + 0x01020304u; let b1 = b0 ^ 0x10203040u;
    for (var it = 0u; it < p.iters; it++) {
        a0 = dot4I8Packed(bitcast<u32>(a0), b0) + a0;
        a1 = dot4I8Packed(bitcast<u32>(a1), b1) + a1;
        a2 = dot4I8Packed(bitcast<u32>(a2), b0) + a2;
        a3 = dot4I8Packed(bitcast<u32>(a3), b1) + a3;
        a4 = dot4I8Packed(bitcast<u32>(a4), b0) + a4;
        a5 = dot4I8Packed(bitcast<u32>(a5), b1) + a5;
        a6 = dot4I8Packed(bitcast<u32>(a6), b0) + a6;
        a7 = dot4I8Packed(bitcast<u32>(a7), b1) + a7;
    }
    out[i] = a0 ^ a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7;
}
"""

FMA = """
struct P { iters: u32, seed: u32 }
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let x = f32(i ^ p.seed) * 1e-9;
    var a0 = vec4<f32>(x, x + 1.0, x + 2.0, x + 3.0);
    var a1 = a0 + 0.5;
    let m = vec4<f32>(0.9999, 0.9998, 0.9997, 0.9996) + f32(p.seed) * 1e-12;
    let c = vec4<f32>(1e-4, 2e-4, 3e-4, 4e-4);
    for (var it = 0u; it < p.iters; it++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
    }
    let s = a0 + a1;
    out[i] = s.x + s.y + s.z + s.w;
}
"""
# ops per loop iteration per invocation: dp4a 8 calls x 8 ops; fma 4 vec4-fma x 4 lanes x 2
OPS_PER_ITER = {"dp4a": 8 * 8, "fma": 4 * 4 * 2}


def measure(ctx, kind: str, src: str, n_wg: int, iters: int, reps: int) -> dict:
    from bitswarm.kernels.device import grid_for, parse_params
    k = ctx.kernel(f"peak_{kind}", lambda: src, "main")
    out = ctx.alloc((n_wg * 256,), "int32")
    params = parse_params(f"peak_{kind}", src, "P").pack(iters=iters, seed=12345)
    grid = grid_for(n_wg)
    dt, _ = time_gpu(ctx, lambda: ctx.dispatch(k, [out], params, grid), inner=3, reps=reps)
    ops = n_wg * 256 * iters * OPS_PER_ITER[kind]
    return {"seconds": dt, "ops": ops, "tops": ops / dt / 1e12, "workgroups": n_wg,
            "iters": iters}


def main() -> None:
    args = parser("peak", __doc__.splitlines()[0]).parse_args()
    from bitswarm.kernels.device import Context
    ctx = Context()
    info = machine_info(ctx)
    print(f"adapter: {info['adapter']}")
    n_wg, iters, reps = (64, 256, 2) if args.quick else (16384, 8192, 5)
    res = {}
    for kind, src in (("dp4a", DP4A), ("fma", FMA)):
        best = measure(ctx, kind, src, n_wg, iters, reps)
        if not args.quick:    # a second, larger grid: keep the better (both are lower bounds)
            other = measure(ctx, kind, src, n_wg * 2, iters, reps)
            best = max(best, other, key=lambda r: r["tops"])
        res[kind] = best
        unit = "TOP/s" if kind == "dp4a" else "TFLOP/s"
        print(f"{kind:5s} {best['tops']:9.3f} {unit}  ({best['seconds'] * 1e3:.2f} ms, "
              f"{best['workgroups']} workgroups x 256, {best['iters']} iterations)")
    payload = {"benchmark": "peak", "machine": info, "quick": args.quick,
               "dp4a_tops": res["dp4a"]["tops"], "fma_tflops": res["fma"]["tops"],
               "detail": res}
    write_json(out_path("peak", args.out), payload)


if __name__ == "__main__":
    main()
