"""Tensor cores from WGSL through Dawn: subgroup matrices, checked against NumPy and timed.

wgpu-native refuses its `cooperative-matrix` feature (benchmarks/cooperative_matrix.py); Dawn
(wgpudawn, the wgpu-py API on Dawn) offers `chromium-experimental-subgroup-matrix`, which maps
to VK_KHR_cooperative_matrix. This probe, run with wgpudawn installed:

1. lists the adapter, its features and its subgroup matrix configurations;
2. for every configuration, multiplies one left x right tile on the GPU and compares it with
   NumPy (exactly for integer types; f16 inputs with f32 results within 1e-3 relative);
3. times a GEMM C = A B^T (A M x K row-major, B N x K row-major: the lm_head's logits h W^T
   and the W1.58A8 forward x codes^T have this form) for the f16 -> f32 and i8 -> i32
   configurations at 2B-4T shapes, checked against NumPy on sampled rows, and reports TFLOP/s
   (TOP/s) beside the dp4a / fp32 peaks of benchmarks/peak.py.

    python benchmarks/subgroup_matrix.py [--out PATH] [--quick]

Source: Dawn's docs/dawn/features/subgroup_matrix.md (types, load/store layout: offset and
stride count elements of the component type; i8 data lives in array<i32>).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # sibling modules
from common import out_path, parser, write_json  # noqa: E402

FEATURE = "chromium-experimental-subgroup-matrix"
ARRAY_TYPE = {"f16": "f16", "f32": "f32", "i8": "i32", "u8": "u32", "i32": "i32", "u32": "u32"}
NP_TYPE = {"f16": np.float16, "f32": np.float32, "i8": np.int8, "u8": np.uint8,
           "i32": np.int32, "u32": np.uint32}


def _head(ct: str, rt: str) -> str:
    f16 = "enable f16;\n" if "f16" in (ct, rt) else ""
    return f"enable chromium_experimental_subgroup_matrix;\n{f16}"


def tile_wgsl(c: dict, sg: int) -> str:
    """One M x K times K x N product, inputs row-major in one array (left then right)."""
    ct, rt, m, n, k = c["component_type"], c["result_component_type"], c["m"], c["n"], c["k"]
    return _head(ct, rt) + f"""
@group(0) @binding(0) var<storage, read> a: array<{ARRAY_TYPE[ct]}>;
@group(0) @binding(1) var<storage, read_write> out: array<{ARRAY_TYPE[rt]}>;
@compute @workgroup_size({sg})
fn main() {{
    let l = subgroupMatrixLoad<subgroup_matrix_left<{ct}, {k}, {m}>>(&a, 0, false, {k});
    let r = subgroupMatrixLoad<subgroup_matrix_right<{ct}, {n}, {k}>>(&a, {m * k}, false, {n});
    let res = subgroupMatrixMultiply<{rt}>(l, r);
    subgroupMatrixStore(&out, 0, res, false, {n});
}}
"""


def gemm_wgsl(c: dict, sg: int, rm: int, rn: int) -> str:
    """C = A B^T; one subgroup per workgroup computes rm x rn result tiles straight from
    storage (no workgroup-memory staging: the baseline of what the hardware gives)."""
    ct, rt, m, n, k = c["component_type"], c["result_component_type"], c["m"], c["n"], c["k"]
    return _head(ct, rt) + f"""
alias L = subgroup_matrix_left<{ct}, {k}, {m}>;
alias R = subgroup_matrix_right<{ct}, {n}, {k}>;
alias C = subgroup_matrix_result<{rt}, {n}, {m}>;
struct Dims {{ M: u32, N: u32, K: u32, pad: u32 }}
@group(0) @binding(0) var<storage, read> a: array<{ARRAY_TYPE[ct]}>;
@group(0) @binding(1) var<storage, read> b: array<{ARRAY_TYPE[ct]}>;
@group(0) @binding(2) var<storage, read_write> cc: array<{ARRAY_TYPE[rt]}>;
@group(0) @binding(3) var<uniform> d: Dims;
@compute @workgroup_size({sg})
fn main(@builtin(workgroup_id) wg: vec3<u32>) {{
    let row0 = wg.y * {rm * m}u;
    let col0 = wg.x * {rn * n}u;
    var acc: array<C, {rm * rn}>;
    for (var kk = 0u; kk < d.K; kk += {k}u) {{
        var l: array<L, {rm}>;
        for (var i = 0u; i < {rm}u; i++) {{
            l[i] = subgroupMatrixLoad<L>(&a, (row0 + i * {m}u) * d.K + kk, false, d.K);
        }}
        for (var j = 0u; j < {rn}u; j++) {{
            let r = subgroupMatrixLoad<R>(&b, (col0 + j * {n}u) * d.K + kk, true, d.K);
            for (var i = 0u; i < {rm}u; i++) {{
                acc[i * {rn}u + j] = subgroupMatrixMultiplyAccumulate(l[i], r, acc[i * {rn}u + j]);
            }}
        }}
    }}
    for (var i = 0u; i < {rm}u; i++) {{
        for (var j = 0u; j < {rn}u; j++) {{
            subgroupMatrixStore(&cc, (row0 + i * {m}u) * d.N + col0 + j * {n}u,
                                acc[i * {rn}u + j], false, d.N);
        }}
    }}
}}
"""


def staged_wgsl(c: dict, sg: int, wm: int, wn: int, rm: int, rn: int, bk: int, pad: int) -> str:
    """C = A B^T for i8 / u8 inputs with A and B tiles staged in workgroup memory: wm x wn
    subgroups, each rm x rn result tiles, so a workgroup covers BM x BN outputs; BK bytes of
    K per stage, rows padded by `pad` bytes (bank spread). The next stage's global loads (one
    vec4 per thread and pass, coalesced) are issued before the current stage's products."""
    ct, rt, m, n, k = c["component_type"], c["result_component_type"], c["m"], c["n"], c["k"]
    BM, BN, T = wm * rm * m, wn * rn * n, sg * wm * wn
    S = bk + pad                          # staged row stride, bytes (= i8 elements)
    va, vb = BM * bk // 16, BN * bk // 16  # vec4 words per stage
    assert va % T == 0 and vb % T == 0 and S % 16 == 0
    pa, pb, vr = va // T, vb // T, bk // 16
    at = ARRAY_TYPE[ct]
    return _head(ct, rt) + f"""diagnostic(off, chromium.subgroup_matrix_uniformity);
alias L = subgroup_matrix_left<{ct}, {k}, {m}>;
alias R = subgroup_matrix_right<{ct}, {n}, {k}>;
alias C = subgroup_matrix_result<{rt}, {n}, {m}>;
struct Dims {{ M: u32, N: u32, K: u32, pad: u32 }}
@group(0) @binding(0) var<storage, read> a: array<vec4<{at}>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<{at}>>;
@group(0) @binding(2) var<storage, read_write> cc: array<{ARRAY_TYPE[rt]}>;
@group(0) @binding(3) var<uniform> d: Dims;
var<workgroup> sa: array<{at}, {BM * S // 4}>;
var<workgroup> sb: array<{at}, {BN * S // 4}>;
@compute @workgroup_size({T})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {{
    let sid = li / {sg}u;
    let sy = sid / {wn}u;
    let sx = sid % {wn}u;
    let row0 = wg.y * {BM}u;
    let col0 = wg.x * {BN}u;
    let kv = d.K / 16u;                   // vec4 words per row of A / B
    var acc: array<C, {rm * rn}>;
    var ra: array<vec4<{at}>, {pa}>;
    var rb: array<vec4<{at}>, {pb}>;
    for (var p = 0u; p < {pa}u; p++) {{
        let v = li + p * {T}u;
        ra[p] = a[(row0 + v / {vr}u) * kv + v % {vr}u];
    }}
    for (var p = 0u; p < {pb}u; p++) {{
        let v = li + p * {T}u;
        rb[p] = b[(col0 + v / {vr}u) * kv + v % {vr}u];
    }}
    for (var k0 = 0u; k0 < d.K; k0 += {bk}u) {{
        workgroupBarrier();
        for (var p = 0u; p < {pa}u; p++) {{
            let v = li + p * {T}u;
            let o = (v / {vr}u) * {S // 4}u + (v % {vr}u) * 4u;
            sa[o] = ra[p].x; sa[o + 1u] = ra[p].y; sa[o + 2u] = ra[p].z; sa[o + 3u] = ra[p].w;
        }}
        for (var p = 0u; p < {pb}u; p++) {{
            let v = li + p * {T}u;
            let o = (v / {vr}u) * {S // 4}u + (v % {vr}u) * 4u;
            sb[o] = rb[p].x; sb[o + 1u] = rb[p].y; sb[o + 2u] = rb[p].z; sb[o + 3u] = rb[p].w;
        }}
        workgroupBarrier();
        if (k0 + {bk}u < d.K) {{
            let kn = (k0 + {bk}u) / 16u;
            for (var p = 0u; p < {pa}u; p++) {{
                let v = li + p * {T}u;
                ra[p] = a[(row0 + v / {vr}u) * kv + kn + v % {vr}u];
            }}
            for (var p = 0u; p < {pb}u; p++) {{
                let v = li + p * {T}u;
                rb[p] = b[(col0 + v / {vr}u) * kv + kn + v % {vr}u];
            }}
        }}
        for (var kk = 0u; kk < {bk}u; kk += {k}u) {{
            var l: array<L, {rm}>;
            for (var i = 0u; i < {rm}u; i++) {{
                l[i] = subgroupMatrixLoad<L>(&sa, (sy * {rm * m}u + i * {m}u) * {S}u + kk, false, {S}u);
            }}
            for (var j = 0u; j < {rn}u; j++) {{
                let r = subgroupMatrixLoad<R>(&sb, (sx * {rn * n}u + j * {n}u) * {S}u + kk, true, {S}u);
                for (var i = 0u; i < {rm}u; i++) {{
                    acc[i * {rn}u + j] = subgroupMatrixMultiplyAccumulate(l[i], r, acc[i * {rn}u + j]);
                }}
            }}
        }}
    }}
    for (var i = 0u; i < {rm}u; i++) {{
        for (var j = 0u; j < {rn}u; j++) {{
            subgroupMatrixStore(&cc, (row0 + sy * {rm * m}u + i * {m}u) * d.N + col0 + sx * {rn * n}u
                                + j * {n}u, acc[i * {rn}u + j], false, d.N);
        }}
    }}
}}
"""


def unrolled_wgsl(c: dict, sg: int, wm: int, wn: int, rm: int, rn: int, bk: int, pad: int) -> str:
    """staged_wgsl with every subgroup matrix a named variable and every loop over tiles and
    staging passes written out: an array of subgroup matrices indexed in a loop may live in
    local memory (spilled) if the driver's compiler does not unroll it."""
    ct, rt, m, n, k = c["component_type"], c["result_component_type"], c["m"], c["n"], c["k"]
    BM, BN, T = wm * rm * m, wn * rn * n, sg * wm * wn
    S = bk + pad
    va, vb = BM * bk // 16, BN * bk // 16
    assert va % T == 0 and vb % T == 0 and S % 16 == 0
    pa, pb, vr = va // T, vb // T, bk // 16
    at = ARRAY_TYPE[ct]
    decl = "\n".join(f"    var acc_{i}_{j}: C;" for i in range(rm) for j in range(rn))
    regs = "\n".join([f"    var ra{p}: vec4<{at}>;" for p in range(pa)]
                     + [f"    var rb{p}: vec4<{at}>;" for p in range(pb)])

    def gload(kexpr):
        out = []
        for p in range(pa):
            out.append(f"        ra{p} = a[(row0 + (li + {p * T}u) / {vr}u) * kv + {kexpr}"
                       f"(li + {p * T}u) % {vr}u];")
        for p in range(pb):
            out.append(f"        rb{p} = b[(col0 + (li + {p * T}u) / {vr}u) * kv + {kexpr}"
                       f"(li + {p * T}u) % {vr}u];")
        return "\n".join(out)

    def sstore():
        out = []
        for nm, cnt, arr in (("ra", pa, "sa"), ("rb", pb, "sb")):
            for p in range(cnt):
                o = f"((li + {p * T}u) / {vr}u) * {S // 4}u + ((li + {p * T}u) % {vr}u) * 4u"
                out.append(f"        {{ let o = {o}; {arr}[o] = {nm}{p}.x; {arr}[o + 1u] = {nm}{p}.y; "
                           f"{arr}[o + 2u] = {nm}{p}.z; {arr}[o + 3u] = {nm}{p}.w; }}")
        return "\n".join(out)

    mma = []
    for kk in range(0, bk, k):
        for i in range(rm):
            mma.append(f"        let l{i}_{kk} = subgroupMatrixLoad<L>(&sa, (sy * {rm * m}u + {i * m}u) "
                       f"* {S}u + {kk}u, false, {S}u);")
        for j in range(rn):
            mma.append(f"        let r{j}_{kk} = subgroupMatrixLoad<R>(&sb, (sx * {rn * n}u + {j * n}u) "
                       f"* {S}u + {kk}u, true, {S}u);")
            for i in range(rm):
                mma.append(f"        acc_{i}_{j} = subgroupMatrixMultiplyAccumulate(l{i}_{kk}, r{j}_{kk}, "
                           f"acc_{i}_{j});")
    stores = "\n".join(
        f"    subgroupMatrixStore(&cc, (row0 + sy * {rm * m}u + {i * m}u) * d.N + col0 + sx * {rn * n}u"
        f" + {j * n}u, acc_{i}_{j}, false, d.N);" for i in range(rm) for j in range(rn))
    return _head(ct, rt) + f"""diagnostic(off, chromium.subgroup_matrix_uniformity);
alias L = subgroup_matrix_left<{ct}, {k}, {m}>;
alias R = subgroup_matrix_right<{ct}, {n}, {k}>;
alias C = subgroup_matrix_result<{rt}, {n}, {m}>;
struct Dims {{ M: u32, N: u32, K: u32, pad: u32 }}
@group(0) @binding(0) var<storage, read> a: array<vec4<{at}>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<{at}>>;
@group(0) @binding(2) var<storage, read_write> cc: array<{ARRAY_TYPE[rt]}>;
@group(0) @binding(3) var<uniform> d: Dims;
var<workgroup> sa: array<{at}, {BM * S // 4}>;
var<workgroup> sb: array<{at}, {BN * S // 4}>;
@compute @workgroup_size({T})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {{
    let sid = li / {sg}u;
    let sy = sid / {wn}u;
    let sx = sid % {wn}u;
    let row0 = wg.y * {BM}u;
    let col0 = wg.x * {BN}u;
    let kv = d.K / 16u;
{decl}
{regs}
    {{
{gload("")}
    }}
    for (var k0 = 0u; k0 < d.K; k0 += {bk}u) {{
        workgroupBarrier();
{sstore()}
        workgroupBarrier();
        if (k0 + {bk}u < d.K) {{
            let kn = (k0 + {bk}u) / 16u;
{gload("kn + ")}
        }}
{chr(10).join(mma)}
    }}
{stores}
}}
"""


def _values(shape, ct, rng):
    if ct in ("f16", "f32"):
        return rng.choice(np.arange(-8, 9) / 8.0, size=shape).astype(NP_TYPE[ct])
    lo, hi = (-128, 128) if ct == "i8" else (0, 256)
    return rng.integers(lo, hi, size=shape).astype(NP_TYPE[ct])


def _run(dev, wgpu, code, bufs, grid, reps=1):
    mod = dev.create_shader_module(code=code)
    pipe = dev.create_compute_pipeline(layout="auto", compute={"module": mod, "entry_point": "main"})
    bg = dev.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=[
        {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
        for i, b in enumerate(bufs)])

    def go(n):
        enc = dev.create_command_encoder()
        cp = enc.begin_compute_pass()
        cp.set_pipeline(pipe)
        cp.set_bind_group(0, bg)
        for _ in range(n):
            cp.dispatch_workgroups(*grid)
        cp.end()
        dev.queue.submit([enc.finish()])
        dev.queue.read_buffer(bufs[-1], 0, 16)     # waits for the GPU
    go(1)
    if reps <= 1:
        return None
    t0 = time.perf_counter()
    go(reps)
    return (time.perf_counter() - t0) / reps


def _buf(dev, wgpu, data=None, size=None, uniform=False):
    U = wgpu.BufferUsage
    usage = (U.UNIFORM if uniform else U.STORAGE) | U.COPY_SRC | U.COPY_DST
    if data is not None:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        raw = np.concatenate([raw, np.zeros((-raw.nbytes) % 16, np.uint8)])
        return dev.create_buffer_with_data(data=raw, usage=usage)
    return dev.create_buffer(size=size, usage=usage)


def check_tile(dev, wgpu, c, sg, rng) -> dict:
    ct, rt, m, n, k = c["component_type"], c["result_component_type"], c["m"], c["n"], c["k"]
    left, right = _values((m, k), ct, rng), _values((k, n), ct, rng)
    inp = _buf(dev, wgpu, np.concatenate([left.reshape(-1), right.reshape(-1)]))
    out = _buf(dev, wgpu, size=max(16, m * n * NP_TYPE[rt]().itemsize))
    _run(dev, wgpu, tile_wgsl(c, sg), [inp, out], (1, 1, 1))
    got = np.frombuffer(dev.queue.read_buffer(out), NP_TYPE[rt])[: m * n].reshape(m, n)
    ref = (left.astype(np.float64) @ right.astype(np.float64))
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    return {"max_abs_err": err, "ok": err <= (0 if rt in ("i32", "u32") else 1e-3 * max(1, np.abs(ref).max()))}


def time_gemm(dev, wgpu, c, sg, M, N, K, rm, rn, rng, reps, staged=None) -> dict:
    ct, rt, m, n, k = c["component_type"], c["result_component_type"], c["m"], c["n"], c["k"]
    a, b = _values((M, K), ct, rng), _values((N, K), ct, rng)
    ba, bb = _buf(dev, wgpu, a), _buf(dev, wgpu, b)
    bc = _buf(dev, wgpu, size=M * N * 4)
    bd = _buf(dev, wgpu, np.array([M, N, K, 0], np.uint32), uniform=True)
    if staged is None:
        grid = (N // (rn * n), M // (rm * m), 1)
        code = gemm_wgsl(c, sg, rm, rn)
    else:
        wm, wn, bk, pad = staged[:4]
        grid = (N // (wn * rn * n), M // (wm * rm * m), 1)
        gen = unrolled_wgsl if len(staged) > 4 and staged[4] == "unrolled" else staged_wgsl
        code = gen(c, sg, wm, wn, rm, rn, bk, pad)
    res = {"M": M, "N": N, "K": K, "tiles_per_subgroup": [rm, rn], "staged": staged}
    try:
        t = _run(dev, wgpu, code, [ba, bb, bc, bd], grid, reps)
    except Exception as e:
        return {**res, "error": f"{type(e).__name__}: {str(e)[:400]}"}
    got = np.frombuffer(dev.queue.read_buffer(bc), NP_TYPE[rt]).reshape(M, N)
    rows = rng.choice(M, 8, replace=False)
    ref = a[rows].astype(np.float64) @ b.astype(np.float64).T
    err = np.abs(got[rows].astype(np.float64) - ref)
    ops = 2.0 * M * N * K
    res.update(ms=t * 1e3, tops=ops / t / 1e12, max_abs_err=float(err.max()),
               max_rel_err=float((err / np.maximum(np.abs(ref), 1)).max()))
    return res


def main() -> None:
    ap = parser("subgroup_matrix", __doc__.splitlines()[0])
    args = ap.parse_args()
    res: dict = {}
    try:
        import wgpudawn as wgpu
        from wgpudawn.backends.dawn import extras
    except ImportError as e:
        res["error"] = f"wgpudawn not installed: {e}"
        print(res)
        write_json(out_path("subgroup_matrix", args.out), res)
        return
    res["wgpudawn"] = wgpu.__version__ if hasattr(wgpu, "__version__") else "?"
    extras.set_instance_extras(enable_toggles=["allow_unsafe_apis", "use_vulkan_memory_model"])
    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    res["adapter"] = {k: adapter.info.get(k) for k in ("device", "backend_type", "adapter_type",
                                                        "vendor", "description")}
    res["features"] = sorted(adapter.features)
    configs = extras.get_adapter_properties(adapter).get("subgroup_matrix_configs", [])
    res["configs"] = configs
    print("adapter:", res["adapter"])
    print("configs:", configs)
    if FEATURE not in adapter.features:
        res["error"] = f"adapter does not list {FEATURE}"
        write_json(out_path("subgroup_matrix", args.out), res)
        return
    feats = [f for f in (FEATURE, "shader-f16", "subgroups") if f in adapter.features]
    lim = adapter.limits
    wanted = {k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size") if k in lim}
    dev = adapter.request_device_sync(required_features=feats, required_limits=wanted)
    sg = max(c.get("max_subgroup_size", 32) for c in configs) if configs else 32
    res["subgroup_size"] = sg
    rng = np.random.default_rng(0)
    res["tiles"] = []
    for c in configs:
        try:
            r = check_tile(dev, wgpu, c, sg, rng)
        except Exception as e:
            r = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        res["tiles"].append({**c, **r})
        print("tile", c, r)
    res["gemm"] = []
    shapes = [("lm_head logits 2B-4T N 2048", 2048, 128256, 2560),
              ("gate/up 2B-4T N 2048", 2048, 6912, 2560),
              ("q/o 2B-4T N 512", 512, 2560, 2560)]
    # (rm, rn, staged): staged = None (straight from storage) or (wm, wn, BK, pad)
    tilings = [(4, 4, None)] if args.quick else [
        (2, 2, (2, 2, 64, 16)), (2, 2, (2, 2, 64, 16, "unrolled")),
        (4, 4, (2, 2, 64, 16, "unrolled")), (4, 2, (2, 4, 64, 16, "unrolled")),
        (2, 4, (4, 2, 64, 16, "unrolled")), (2, 2, (2, 2, 128, 16, "unrolled")),
        (4, 4, (2, 2, 32, 16, "unrolled"))]
    for c in configs:
        if (c["component_type"], c["result_component_type"]) not in (("f16", "f32"), ("i8", "i32")):
            continue
        for name, M, N, K in shapes:
            for rm, rn, staged in tilings:
                wm, wn = staged[:2] if staged else (1, 1)
                if M % (wm * rm * c["m"]) or N % (wn * rn * c["n"]) or K % c["k"]:
                    continue
                r = time_gemm(dev, wgpu, c, sg, M, N, K, rm, rn, rng,
                              reps=3 if N > 100000 else 10, staged=staged)
                r = {"shape": name, "config": f'{c["component_type"]}->{c["result_component_type"]} '
                     f'{c["m"]}x{c["n"]}x{c["k"]}', **r}
                res["gemm"].append(r)
                print("gemm", r)
    write_json(out_path("subgroup_matrix", args.out), res)


if __name__ == "__main__":
    main()
