// One query (the newest token) attending over the first L rows of a KV cache, GQA.
// Reference: reference.py `attention_decode`. q, o f32 (1, Hq*hd); k, v f32
// (Lmax, Hkv*hd), row = position, after RoPE. Query head h reads KV head h / (Hq/Hkv).
// One 64-invocation workgroup per query head; the L scores live in workgroup memory, so
// L <= LMAX and hd <= HDMAX. The loop structure is that of attention.wgsl `forward` (same
// per-thread partial max/sum, same reduction tree), so a decode row reproduces the row of a
// full causal forward.
struct Params { l: u32, hq: u32, hkv: u32, hd: u32, scale: f32 }

const WG: u32 = 64u;
const LMAX: u32 = 4096u;
const HDMAX: u32 = 256u;
var<workgroup> red: array<f32, 64>;
var<workgroup> row_q: array<f32, 256>;     // HDMAX
var<workgroup> sc: array<f32, 4096>;       // LMAX

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

fn block_max(tid: u32, x: f32) -> f32 {
    red[tid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = max(red[tid], red[tid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn block_sum(tid: u32, x: f32) -> f32 {
    red[tid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = red[tid] + red[tid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let h = wid.x;
    if (h >= p.hq) { return; }
    let kvh = h / (p.hq / p.hkv);
    let qoff = h * p.hd;
    let kvs = p.hkv * p.hd;
    let kvoff = kvh * p.hd;
    for (var d = tid; d < p.hd; d += WG) { row_q[d] = q[qoff + d]; }
    workgroupBarrier();
    var m = -0x1.fffffep+127f;   // -FLT_MAX, exact (Tint rejects a decimal literal that rounds to it)
    for (var j = tid; j < p.l; j += WG) {
        var s = 0.0;
        let ko = kvoff + j * kvs;
        for (var d = 0u; d < p.hd; d++) { s += row_q[d] * k[ko + d]; }
        s = s * p.scale;
        sc[j] = s;
        m = max(m, s);
    }
    let mx = block_max(tid, m);
    var l = 0.0;
    for (var j = tid; j < p.l; j += WG) {
        let e = exp(sc[j] - mx);
        sc[j] = e;
        l += e;
    }
    let sum = block_sum(tid, l);          // its barriers also publish sc[]
    for (var d = tid; d < p.hd; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < p.l; j++) { acc += sc[j] * v[kvoff + j * kvs + d]; }
        o[qoff + d] = acc / sum;
    }
}
