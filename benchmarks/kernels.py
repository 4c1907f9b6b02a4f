"""Per-kernel throughput at training shapes (tokens = 4 x 128 = 512), against the WGSL peak and a
baseline measured in the same run (torch bf16 on CUDA when torch sees a GPU, else NumPy fp32).

Cases per model shape (benchmarks/shapes.py): W1.58A8 forward of each projection shape (the
dp4a GEMM alone, and with rmsnorm + quantize_act), its straight-through input gradient,
LoRA r=8 matmuls (forward A, B; backward dB, dh, dA, dx), causal GQA attention forward and
backward, the fp32 lm_head forward/backward, and RMSNorm + activation quantization. Where the
adapter has shader-f16, the STE gradient also on its f16 path (bitlinear_backward_f16.wgsl,
rows "W1.58A8 input grad (STE) f16", each --ste-chunks length, and its first pass alone), and
the packed-f16 FMA peak beside the fp32 one; on every adapter the int8 dot-product paths
(bitlinear_backward_int.wgsl, rows "W1.58A8 input grad (STE) i16" and "... i8").
Ops: GEMMs count 2*M*N*K; attention counts the causal half of 2 GEMMs forward (4*B*Hq*T^2*hd/2)
and 5 GEMM-equivalents backward. Times: GPU execution (encoded untimed, then submit + wait timed) and, separately, the host's
encoding time per call. Fraction of peak: against peak.py's dp4a TOP/s for the int8
GEMM, its fp32 FMA TFLOP/s for the rest (pass --peak PATH, or it is measured here).

    python benchmarks/kernels.py [--quick] [--models 125m,1b,2b4t] [--peak PATH] [--out PATH]
                                 [--bitlinear-splits 1,2,4,auto] [--bitlinear-kw 16,32]
                                 [--bitlinear-tm 64,32,auto] [--ste-chunks 16,32,64]

--bitlinear-splits / --bitlinear-kw / --bitlinear-tm add, per projection, group "W1.58A8 GEMM
split-K" rows timing the GEMM at each (tile rows, K step, split count) triple:
GpuBackend.bitlinear_tm (64 or 32 output rows per tile; "auto": the heuristic, the default),
bitlinear_kw (16 or 32 activation words per K step; default 16) and bitlinear_splits forced to
each count ("auto": the heuristic). Row fields `bitlinear_tm`, `bitlinear_kw`,
`bitlinear_splits` (null = heuristic), `tm_used` and `splits_used` (after clamping to the
kernel's K steps). The plain "W1.58A8 GEMM" rows run the defaults.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # sibling modules
from common import (load_peak, machine_info, out_path, parser, time_gpu,  # noqa: E402
                               time_host, torch_cuda, write_json)
from shapes import CONFIGS  # noqa: E402

F32 = np.float32
TOKENS = 512
RANK = 8


def _peak(ctx, path, quick):
    p = load_peak(path)
    if p is None:
        import peak as pk
        n_wg, iters, reps = (64, 256, 2) if quick else (16384, 8192, 3)
        p = {"dp4a_tops": pk.measure(ctx, "dp4a", pk.DP4A, n_wg, iters, reps)["tops"],
             "fma_tflops": pk.measure(ctx, "fma", pk.FMA, n_wg, iters, reps)["tops"]}
    return p


class Baseline:
    """The same math in torch bf16 on CUDA (GEMMs, SDPA flash attention), else NumPy fp32."""

    def __init__(self, quick: bool):
        self.torch = None if quick else torch_cuda()
        self.name = "torch-bf16-cuda" if self.torch else "numpy-fp32"

    def arr(self, shape, rng):
        a = (rng.standard_normal(shape) * 0.5).astype(F32)
        if self.torch:
            return self.torch.from_numpy(a).to("cuda", self.torch.bfloat16)
        return a

    def time(self, fn):
        if self.torch:
            return time_host(fn, inner=20, reps=5, sync=self.torch.cuda.synchronize)
        return time_host(fn, inner=1, reps=2)

    def mm(self, a, b_t):          # a (M, K) @ b_t (N, K)^T
        return (lambda: a @ b_t.T)

    def attention(self, B, T, Hq, Hkv, hd, rng, backward):
        if self.torch:
            torch = self.torch
            F = torch.nn.functional
            q = torch.randn(B, Hq, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(B, Hkv, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(B, Hkv, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)

            def fwd():
                kk = k.repeat_interleave(Hq // Hkv, 1)
                vv = v.repeat_interleave(Hq // Hkv, 1)
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
            if not backward:
                return fwd
            o = fwd()
            g = torch.randn_like(o)
            return lambda: torch.autograd.grad(o, (q, k, v), g, retain_graph=True)
        from bitswarm.kernels.ops.attention import reference as ref
        q = self.arr((B * T, Hq * hd), rng)
        k = self.arr((B * T, Hkv * hd), rng)
        v = self.arr((B * T, Hkv * hd), rng)
        if not backward:
            return lambda: ref.attention(q, k, v, B, T, Hq, Hkv, hd)
        o, lse = ref.attention(q, k, v, B, T, Hq, Hkv, hd)
        return lambda: ref.attention_backward(q, q, k, v, o, lse, B, T, Hq, Hkv, hd)

    def rmsnorm_quant(self, N, C, rng):
        x = self.arr((N, C), rng)
        w = self.arr((C,), rng)
        if self.torch:
            def f():
                xf = x.float()
                y = xf * self.torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()
                s = 127.0 / y.abs().amax(-1, keepdim=True).clamp_min(1e-5)
                return (y * s).round().clamp(-128, 127).to(self.torch.int8), s
            return f
        from bitswarm.kernels.ops.bitlinear.reference import quantize_act
        from bitswarm.kernels.ops.rmsnorm.reference import rmsnorm
        return lambda: quantize_act(rmsnorm(x, w, 1e-5)[0])


def _forced(be, tm, kw, splits, fn):
    """fn run with be.bitlinear_tm, be.bitlinear_kw, be.bitlinear_splits = tm, kw, splits
    (restored after)."""
    def run():
        saved = be.bitlinear_tm, be.bitlinear_kw, be.bitlinear_splits
        be.bitlinear_tm, be.bitlinear_kw, be.bitlinear_splits = tm, kw, splits
        try:
            return fn()
        finally:
            be.bitlinear_tm, be.bitlinear_kw, be.bitlinear_splits = saved
    return run


# lm_head rows: (tile edge, main8's k per step, f16 table words read in pairs)
LM_TILES = [(64, 8, False), (64, 8, True), (128, 8, False), (128, 16, False), (128, 16, True)]
# fused op rows: (label, matmul_tile (None: by shape), matmul_ks8, f16 pairs, lm_head_widen)
LM_FUSED = [("tile 64 (main only, as before main8)", 64, 8, False, False),
            ("tile 64 pairs", 64, 8, True, False),
            ("by shape, pairs, no widen", None, 16, True, False),
            ("by shape, pairs, widen ks16", None, 16, True, True),
            ("by shape, pairs, widen ks8", None, 8, True, True)]


def _tile(be, tile, fn, ks8: int = 8, pairs: bool = False, widen: bool = True):
    """fn run with be.matmul_tile forced to tile (64: matmul.wgsl main, 128: main8, None: by
    shape), its matmul_ks8, matmul_f16_pairs and lm_head_widen to ks8, pairs and widen (the
    same bits, only speed differs)."""
    def run():
        saved = be.matmul_tile, be.matmul_ks8, be.matmul_f16_pairs, be.lm_head_widen
        be.matmul_tile, be.matmul_ks8, be.matmul_f16_pairs, be.lm_head_widen = (
            tile, ks8, pairs, widen)
        try:
            return fn()
        finally:
            be.matmul_tile, be.matmul_ks8, be.matmul_f16_pairs, be.lm_head_widen = saved
    return run


def _ste(be, precision: str, chunk: int, dy, w, select: bool = False):
    """The STE input gradient with be.ste_precision / ste_chunk / ste_select_decode forced
    (restored after)."""
    saved = be.ste_precision, be.ste_chunk, be.ste_select_decode
    be.ste_precision, be.ste_chunk, be.ste_select_decode = precision, chunk, select
    try:
        return be.bitlinear_backward(dy, w)
    finally:
        be.ste_precision, be.ste_chunk, be.ste_select_decode = saved


def _ste_int_forced(be, precision: str, tile: int, splits: int, dy, w):
    """The int STE with be.bitlinear_bwd_tile and be.ste_int_splits forced (restored after)."""
    saved = be.bitlinear_bwd_tile, be.ste_int_splits
    be.bitlinear_bwd_tile, be.ste_int_splits = tile, splits
    try:
        return _ste(be, precision, 32, dy, w)
    finally:
        be.bitlinear_bwd_tile, be.ste_int_splits = saved


def _ste_rows(be, dy):
    """Only the f16 path's first pass (per-row exponent, dy to scaled f16), as it launches it."""
    from bitswarm.kernels.device import grid_for
    from bitswarm.kernels.ops.bitlinear.reference import ste_f16_top
    N, OUT = dy.shape
    op = -(-OUT // 16) * 16
    dy16, rs = be._new((N, op), "float16"), be._new((N,))
    be._launch("bitlinear_backward_f16", [dy, dy16, rs], grid_for(N),
               dict(n=N, out=OUT, op2=op // 2, top=ste_f16_top(be.ste_chunk)), name="rows")
    return dy16, rs


# Packed-f16 FMA peak (HFMA2 on NVIDIA), the register-only loop of peak.py's fp32 FMA with
# `chains` independent vec{width}<f16> accumulators (fma each per iteration).
def _fma16_src(chains: int, width: int) -> str:
    t = f"vec{width}<f16>"
    init = "\n".join(f"    var a{i} = {t}(x + {0.0625 * i:.4f}h);" for i in range(chains))
    body = "\n".join(f"        a{i} = fma(a{i}, m, c);" for i in range(chains))
    total = " + ".join(f"a{i}" for i in range(chains))
    return f"""
enable f16;
struct P {{ iters: u32, seed: u32 }}
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = gid.x + gid.y * nwg.x * 256u;
    let x = f16(f32(i & 255u) * 1e-3);
{init}
    let m = {t}(0.999h) + f16(f32(p.seed & 1u) * 1e-3);
    let c = {t}(1e-3h);
    for (var it = 0u; it < p.iters; it++) {{
{body}
    }}
    let s = {t}({total});
    out[i] = f32(dot(vec{width}<f32>(s), vec{width}<f32>(1.0)));
}}
"""


FMA16_VARIANTS = ((4, 4), (8, 4), (8, 2), (16, 2))      # (chains, width)


def _fma16_peak(ctx, quick: bool) -> dict | None:
    """Packed-f16 FMA TFLOP/s of each FMA16_VARIANTS probe and their best (None without
    shader-f16): lower bounds, as peak.py's."""
    if "shader-f16" not in ctx.features:
        return None
    from bitswarm.kernels.device import grid_for, parse_params
    n_wg, iters, reps = (64, 256, 2) if quick else (16384, 8192, 3)
    out = ctx.alloc((n_wg * 256,), "int32")
    res = {}
    for chains, width in FMA16_VARIANTS:
        src = _fma16_src(chains, width)
        k = ctx.kernel(f"peak_fma16_{chains}x{width}", lambda src=src: src, "main")
        params = parse_params("peak_fma16", src, "P").pack(iters=iters, seed=12345)
        dt, _ = time_gpu(ctx, lambda: ctx.dispatch(k, [out], params, grid_for(n_wg)), inner=3,
                         reps=reps)
        res[f"{chains}x vec{width}<f16>"] = n_wg * 256 * iters * chains * width * 2 / dt / 1e12
    res["best"] = max(res.values())
    return res


def cases_for(model: str, cfg, be, base: Baseline, rng, quick: bool, sweep=(),
              ste_chunks=(32,)):
    """(group, name, ours (callable encoding GPU work), ops, peak kind, baseline callable,
    extra row fields). sweep: (bitlinear_tm, bitlinear_kw, bitlinear_splits) triples for the
    split-K rows; ste_chunks: f16 STE chunk lengths timed (rows "W1.58A8 input grad (STE) f16",
    where the adapter has shader-f16; "% of peak" there is against the fp32 FMA peak too)."""
    from bitswarm.kernels.config import TernaryLinear
    N = 64 if quick else TOKENS       # TOKENS: --tokens
    D, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    Hq, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    T = min(128, N)
    B = N // T
    out = []

    def gpu_arr(shape, scale=0.5):
        return be.tensor((rng.standard_normal(shape) * scale).astype(F32))

    projs = {"q/o (D->Hq*hd)": (Hq * hd, D), "k/v (D->Hkv*hd)": (Hkv * hd, D),
             "gate/up (D->I)": (I, D), "down (I->D)": (D, I)}
    for pname, (OUT, K) in projs.items():
        w = be.ternary(TernaryLinear(rng.integers(-1, 2, (OUT, K)).astype(np.int8), F32(1.3)))
        x = gpu_arr((N, K))
        xq, xs = be.quantize_act(x)
        nw = gpu_arr((K,))
        dy = gpu_arr((N, OUT))
        ops = 2 * N * K * OUT
        bx, bw = base.arr((N, K), rng), base.arr((OUT, K), rng)
        by = base.arr((N, OUT), rng)
        gemm = (lambda xq=xq, xs=xs, w=w: be.bitlinear(xq, xs, w))
        out.append(("W1.58A8 GEMM", pname, gemm, ops, "dp4a", base.mm(bx, bw),
                    {"bitlinear_tm": be.bitlinear_tm, "bitlinear_kw": be.bitlinear_kw,
                     "bitlinear_splits": be.bitlinear_splits,
                     "tm_used": be.bitlinear_tile_rows(N, OUT),
                     "splits_used": be.bitlinear_plan(N, K, OUT)[0]}))
        for tm, kw, sp in sweep:
            tm_used, used = _forced(be, tm, kw, sp, lambda: (
                be.bitlinear_tile_rows(N, OUT), be.bitlinear_plan(N, K, OUT)[0]))()
            out.append(("W1.58A8 GEMM split-K",
                        f"{pname} tm={tm or 'auto'} kw={kw} splits={sp or 'auto'}",
                        _forced(be, tm, kw, sp, gemm), ops, "dp4a", base.mm(bx, bw),
                        {"bitlinear_tm": tm, "bitlinear_kw": kw, "bitlinear_splits": sp,
                         "tm_used": tm_used, "splits_used": used}))

        def fwd_full(x=x, nw=nw, w=w):
            n, _ = be.rmsnorm(x, nw, 1e-5)
            q, s = be.quantize_act(n)
            return be.bitlinear(q, s, w)
        out.append(("W1.58A8 fwd + rmsnorm + quantize", pname, fwd_full, ops, "dp4a",
                    base.mm(bx, bw)))
        out.append(("W1.58A8 input grad (STE)", pname,
                    lambda dy=dy, w=w: _ste(be, "f32", 32, dy, w), ops, "fma",
                    base.mm(by, bw.T), {"ste_precision": "f32"}))
        # int paths: "% of peak" against dp4a counts the products once (i16 issues two dp4a each)
        for prec in ("i16", "i8"):
            out.append((f"W1.58A8 input grad (STE) {prec}", pname,
                        lambda dy=dy, w=w, prec=prec: _ste(be, prec, 32, dy, w), ops, "dp4a",
                        base.mm(by, bw.T), {"ste_precision": prec}))
            for tile in (64, 128):                 # forced tile edge and slabs over OUT
                for sp in (1, 2, 4):
                    out.append((f"W1.58A8 input grad (STE) {prec} tiles", f"{pname} tile={tile} "
                                f"splits={sp}", lambda dy=dy, w=w, prec=prec, tile=tile, sp=sp:
                                _ste_int_forced(be, prec, tile, sp, dy, w), ops, "dp4a",
                                base.mm(by, bw.T), {"ste_precision": prec, "tile": tile,
                                                    "ste_int_splits": sp}))
        if "shader-f16" in be.ctx.features:
            for ch in ste_chunks:
                out.append(("W1.58A8 input grad (STE) f16",
                            pname if ch == 32 else f"{pname} chunk={ch}",
                            lambda dy=dy, w=w, ch=ch: _ste(be, "f16", ch, dy, w), ops, "fma",
                            base.mm(by, bw.T), {"ste_precision": "f16", "ste_chunk": ch}))
            out.append(("W1.58A8 input grad (STE) f16", f"{pname} select decode",
                        lambda dy=dy, w=w: _ste(be, "f16", 32, dy, w, True), ops, "fma",
                        base.mm(by, bw.T), {"ste_precision": "f16", "ste_chunk": 32,
                                            "ste_select_decode": True}))
            out.append(("W1.58A8 input grad (STE) f16", f"{pname} rows pass alone",
                        lambda dy=dy: _ste_rows(be, dy), 0, "fma", base.mm(by, bw.T),
                        {"ste_precision": "f16"}))
    # projections that read the same input, as one GEMM (bitlinear_group, as the model runs them)
    for pname, outs in {"q/k/v fused (D->(Hq+2Hkv)*hd)": (Hq * hd, Hkv * hd, Hkv * hd),
                        "gate+up fused (D->2I)": (I, I)}.items():
        group = be.ternary_group([TernaryLinear(rng.integers(-1, 2, (o, D)).astype(np.int8),
                                                F32(1.3)) for o in outs])
        xq, xs = be.quantize_act(gpu_arr((N, D)))
        out.append(("W1.58A8 GEMM", pname, lambda xq=xq, xs=xs, g=group:
                     be.bitlinear_group(xq, xs, g), 2 * N * D * sum(outs), "dp4a",
                     base.mm(base.arr((N, D), rng), base.arr((sum(outs), D), rng))))
    # LoRA r=8 on the widest projection (gate/up: D -> I)
    OUT, K = I, D
    lx, A, Bm = gpu_arr((N, K)), gpu_arr((RANK, K), 0.02), gpu_arr((OUT, RANK), 0.02)
    h, y, dy, dh = gpu_arr((N, RANK)), gpu_arr((N, OUT)), gpu_arr((N, OUT)), gpu_arr((N, RANK))
    bx, bA, bB = base.arr((N, K), rng), base.arr((RANK, K), rng), base.arr((OUT, RANK), rng)
    bh, bdy = base.arr((N, RANK), rng), base.arr((N, OUT), rng)
    lora = [
        ("fwd h = x A^T", lambda: be.matmul(lx, A, trans_b=True), 2 * N * K * RANK,
         base.mm(bx, bA)),
        ("fwd y += s h B^T", lambda: be.matmul(h, Bm, trans_b=True, alpha=2.0, acc=y),
         2 * N * RANK * OUT, base.mm(bh, bB)),
        ("bwd dB = dy^T h", lambda: be.matmul(dy, h, trans_a=True, alpha=2.0), 2 * N * RANK * OUT,
         base.mm(bdy.T, bh.T)),
        ("bwd dh = dy B", lambda: be.matmul(dy, Bm, alpha=2.0), 2 * N * RANK * OUT,
         base.mm(bdy, bB.T)),
        ("bwd dA = dh^T x", lambda: be.matmul(dh, lx, trans_a=True), 2 * N * RANK * K,
         base.mm(bh.T, bx.T)),
        ("bwd dx += dh A", lambda: be.matmul(dh, A, acc=lx), 2 * N * RANK * K, base.mm(bh, bA.T)),
    ]
    def tiled(fn):                       # the same product on the tiled matmul.wgsl
        def run():
            saved, be.matmul_skinny = be.matmul_skinny, False
            try:
                return fn()
            finally:
                be.matmul_skinny = saved
        return run
    for name, fn, ops, bfn in lora:
        out.append((f"LoRA r{RANK} (D->I)", name, fn, ops, "fma", bfn))
        out.append((f"LoRA r{RANK} (D->I), tiled matmul", name, tiled(fn), ops, "fma", bfn))
    # attention
    q, k, v = gpu_arr((N, Hq * hd)), gpu_arr((N, Hkv * hd)), gpu_arr((N, Hkv * hd))
    o, lse = be.attention(q, k, v, B, T, Hq, Hkv, hd)
    aops = 4 * B * Hq * T * T * hd // 2
    out.append(("attention", f"fwd B{B} T{T} Hq{Hq} Hkv{Hkv} hd{hd}",
                lambda: be.attention(q, k, v, B, T, Hq, Hkv, hd), aops, "fma",
                base.attention(B, T, Hq, Hkv, hd, rng, False)))
    out.append(("attention", f"bwd B{B} T{T} Hq{Hq} Hkv{Hkv} hd{hd}",
                lambda: be.attention_backward(q, q, k, v, o, lse, B, T, Hq, Hkv, hd),
                aops * 5 // 2, "fma", base.attention(B, T, Hq, Hkv, hd, rng, True)))
    # lm_head (fp32, tied embeddings)
    if not quick or V <= 4096:
        hx, W, dl = gpu_arr((N, D)), gpu_arr((V, D), 0.02), gpu_arr((N, V))
        bx, bW, bdl = base.arr((N, D), rng), base.arr((V, D), rng), base.arr((N, V), rng)
        out.append(("lm_head fp32", f"fwd ({N}x{D}) @ ({V}x{D})^T",
                    lambda: be.matmul(hx, W, trans_b=True), 2 * N * D * V, "fma", base.mm(bx, bW)))
        out.append(("lm_head fp32", f"bwd dlogits @ W -> ({N}x{D})",
                    lambda: be.matmul(dl, W), 2 * N * D * V, "fma", base.mm(bdl, bW.T)))
        # the lm_head as a training step runs it: f16 table, one LM_CHUNK vocab chunk's two
        # matmuls, and the whole fused op, on each tile edge (matmul.wgsl main / main8)
        from bitswarm.kernels.ops.lm_head.reference import LM_CHUNK
        vc = min(LM_CHUNK, V)
        tW = be.table((rng.standard_normal((V, D)) * 0.02).astype(F32))
        tc = be.table((rng.standard_normal((vc, D)) * 0.02).astype(F32))
        dlc, gacc = gpu_arr((N, vc)), gpu_arr((N, D))
        tgt = be.tensor(rng.integers(0, V, N).astype(np.int32))
        bdc, bWc = base.arr((N, vc), rng), base.arr((vc, D), rng)
        tc32 = be.tensor(be.numpy(tc).astype(F32))          # the same values, f32 storage
        for tile, ks8, pairs in LM_TILES:
            tag = f"tile {tile}" + (f" ks{ks8}" if tile == 128 else "") + (" pairs" if pairs else "")
            extra = {"matmul_tile": tile, "matmul_ks8": ks8, "matmul_f16_pairs": pairs,
                     "table": tc.dtype}
            out.append(("lm_head fp32 chunk", f"fwd ({N}x{D}) @ ({vc}x{D})^T {tag}",
                        _tile(be, tile, lambda: be.matmul(hx, tc, trans_b=True), ks8, pairs),
                        2 * N * D * vc, "fma", base.mm(bx, bWc), extra))
            out.append(("lm_head fp32 chunk", f"bwd acc += ({N}x{vc}) @ W {tag}",
                        _tile(be, tile, lambda: be.matmul(dlc, tc, acc=gacc), ks8, pairs),
                        2 * N * D * vc, "fma", base.mm(bdc, bWc.T), extra))
        for tile, ks8 in ((64, 8), (128, 8), (128, 16)):   # the same chunk from an f32 table
            extra = {"matmul_tile": tile, "matmul_ks8": ks8, "table": "float32"}
            out.append(("lm_head fp32 chunk", f"fwd f32 table tile {tile} ks{ks8}",
                        _tile(be, tile, lambda: be.matmul(hx, tc32, trans_b=True), ks8),
                        2 * N * D * vc, "fma", base.mm(bx, bWc), extra))
            out.append(("lm_head fp32 chunk", f"bwd f32 table tile {tile} ks{ks8}",
                        _tile(be, tile, lambda: be.matmul(dlc, tc32, acc=gacc), ks8),
                        2 * N * D * vc, "fma", base.mm(bdc, bWc.T), extra))
        out.append(("lm_head fp32 chunk", f"widen f16 ({vc}x{D}) to f32",
                    lambda: be.widen(tc, 0, vc, D), 0, "fma", base.mm(bx, bWc), {}))
        for tag, tile, ks8, pairs, wide in LM_FUSED:
            out.append(("lm_head fp32 fused", f"loss + dx, V {V}, {tag}",
                        _tile(be, tile, lambda: be.lm_head_cross_entropy(hx, tW, tgt, 1.0),
                              ks8, pairs, wide),
                        4 * N * D * V, "fma", base.mm(bx, bW),
                        {"matmul_tile": tile or "auto", "matmul_ks8": ks8,
                         "matmul_f16_pairs": pairs, "lm_head_widen": wide,
                         "table": tW.dtype}))
    # RMSNorm + activation quantization
    for C in (D, I):
        x, nw = gpu_arr((N, C)), gpu_arr((C,))

        def rq(x=x, nw=nw):
            n, _ = be.rmsnorm(x, nw, 1e-5)
            return be.quantize_act(n)
        out.append(("rmsnorm + quantize_act", f"({N}x{C})", rq, 0, "fma",
                    base.rmsnorm_quant(N, C, rng)))
    return out


def main() -> None:
    global TOKENS
    ap = parser("kernels", __doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma list of benchmarks/shapes.py names")
    ap.add_argument("--peak", default=None, help="peak.py JSON (else peak is measured here)")
    ap.add_argument("--bitlinear-splits", default="", metavar="LIST",
                    help="comma list of split-K slab counts (or auto) to time the W1.58A8 GEMM "
                         "at, each as its own row (e.g. 1,2,4,auto)")
    ap.add_argument("--bitlinear-kw", default="", metavar="LIST",
                    help="comma list of bitlinear K steps in activation words (16, 32) for "
                         "those rows (default 16)")
    ap.add_argument("--bitlinear-tm", default="", metavar="LIST",
                    help="comma list of bitlinear output rows per tile (64, 32, auto) for "
                         "those rows (default auto: the heuristic)")
    ap.add_argument("--tokens", type=int, default=512,
                    help="token rows N of every case (default 512 = 4 x 128)")
    ap.add_argument("--gemm-tile", default="auto", choices=["auto", "64", "128"],
                    help="force the W1.58A8 forward and STE-gradient tile edge (A/B runs)")
    ap.add_argument("--ste-chunks", default="32", metavar="LIST",
                    help="comma list of f16 STE chunk lengths (16, 32, 64) to time beside the "
                         "fp32 STE rows (adapters with shader-f16 only)")
    ap.add_argument("--groups", default="", metavar="LIST",
                    help="comma list of substrings: time only cases whose group holds one "
                         "(e.g. 'STE' for the input-gradient rows alone)")
    args = ap.parse_args()
    TOKENS = args.tokens
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    ste_chunks = [int(v) for v in args.ste_chunks.split(",") if v.strip()]
    splits_list = [None if v.strip() == "auto" else int(v)
                   for v in args.bitlinear_splits.split(",") if v.strip()]
    kw_list = [int(v) for v in args.bitlinear_kw.split(",") if v.strip()]
    tm_list = [None if v.strip() == "auto" else int(v)
               for v in args.bitlinear_tm.split(",") if v.strip()]
    sweep = ([(tm, kw, sp) for tm in (tm_list or [None]) for kw in (kw_list or [16])
              for sp in (splits_list or [None])]
             if splits_list or kw_list or tm_list else [])
    from bitswarm.kernels.gpu_backend import GpuBackend
    be = GpuBackend()
    if args.gemm_tile != "auto":
        be.bitlinear_tm = be.bitlinear_bwd_tile = int(args.gemm_tile)
    ctx = be.ctx
    info = machine_info(ctx)
    print(f"adapter: {info['adapter']}")
    peak = _peak(ctx, args.peak, args.quick)
    f16p = _fma16_peak(ctx, args.quick)
    peak["fma16_tflops"] = f16p and f16p["best"]
    print(f"peak: dp4a {peak['dp4a_tops']:.2f} TOP/s, fp32 FMA {peak['fma_tflops']:.2f} TFLOP/s"
          + (f", packed f16 FMA {peak['fma16_tflops']:.2f} TFLOP/s ("
             + ", ".join(f"{k} {v:.1f}" for k, v in f16p.items() if k != "best") + ")"
             if f16p else ""))
    base = Baseline(args.quick)
    models = (args.models or ("tiny" if args.quick else "125m,1b,2b4t")).split(",")
    inner, reps = (2, 2) if args.quick else (10, 5)
    rows = []
    rng = np.random.default_rng(0)
    for model in models:
        cfg = CONFIGS[model]
        print(f"\n== {model}: D={cfg.hidden_size} I={cfg.intermediate_size} Hq={cfg.num_attention_heads}"
              f" Hkv={cfg.num_key_value_heads} hd={cfg.head_dim} V={cfg.vocab_size}; baseline {base.name}")
        print(f"{'group':34s} {'case':34s} {'gpu ms':>9s} {'T(FL)OP/s':>9s} {'%peak':>6s}"
              f" {'base ms':>9s} {'base/ours':>9s} {'host ms':>8s}")
        for group, name, fn, ops, kind, bfn, *extra in cases_for(model, cfg, be, base, rng,
                                                                 args.quick, sweep,
                                                                 ste_chunks):
            if groups and not any(g in group for g in groups):
                continue
            t, th = time_gpu(ctx, fn, inner=inner, reps=reps)
            tb = base.time(bfn)
            pk = peak["dp4a_tops" if kind == "dp4a" else "fma_tflops"]
            rate = ops / t / 1e12 if ops else None
            frac = rate / pk if rate else None
            rows.append({"model": model, "group": group, "case": name, "ours_s": t,
                         "host_encode_s": th,
                         "rate_t": rate, "peak_kind": kind, "frac_peak": frac,
                         "baseline": base.name, "baseline_s": tb, "speed_vs_baseline": tb / t,
                         "ops": ops, **(extra[0] if extra else {})})
            print(f"{group:34s} {name:34s} {t * 1e3:9.3f} {rate or 0:9.3f} "
                  f"{(frac or 0) * 100:5.1f}% {tb * 1e3:9.3f} {tb / t:9.3f} {th * 1e3:8.3f}")
        write_json(out_path("kernels", args.out), {          # after every model: partial runs count
            "benchmark": "kernels", "machine": info, "quick": args.quick, "tokens": TOKENS,
            "lora_rank": RANK,
            "peak": {"dp4a_tops": peak["dp4a_tops"], "fma_tflops": peak["fma_tflops"],
                     "fma16_tflops": peak["fma16_tflops"], "fma16_variants": f16p},
            "baseline": base.name, "rows": rows})


if __name__ == "__main__":
    main()
