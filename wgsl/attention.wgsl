// Causal GQA attention, forward and backward. Reference: kernels/reference.py `attention`,
// `attention_backward`. Layouts (token-major, N = B*T, token n = b*T + t):
//   q, o, do  f32 (N, Hq*hd);  k, v, dk, dv  f32 (N, Hkv*hd);  lse, dsum  f32 (B, Hq, T)
// Query head h reads KV head h / (Hq/Hkv). scale = 1/sqrt(hd) (from the host, in f32).
// One 64-invocation workgroup per query row (forward, backward_dq) or per key row
// (backward_dkv); the row's scores live in workgroup memory, so T <= TMAX and hd <= HDMAX.
// backward_dq also writes dsum = rowsum(dO * O), which backward_dkv reads (run dq first).
// No atomics: dk/dv sum over the query heads of a group and the later queries in one
// workgroup, so results are deterministic.
struct Params { b: u32, t: u32, hq: u32, hkv: u32, hd: u32, scale: f32 }

const WG: u32 = 64u;
const TMAX: u32 = 2048u;
const HDMAX: u32 = 256u;
var<workgroup> red: array<f32, 64>;
var<workgroup> row_a: array<f32, 256>;     // HDMAX: q (or k) row
var<workgroup> row_b: array<f32, 256>;     // HDMAX: dO (or v) row
var<workgroup> sc: array<f32, 2048>;       // TMAX: scores / probabilities / dS per key
var<workgroup> sc2: array<f32, 2048>;      // TMAX: P per query (backward_dkv)

fn block_max(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = max(red[tid], red[tid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn block_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = red[tid] + red[tid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// ---------------------------------------------------------------- forward
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;          // (b*Hq + h)*T + t
    if (row >= p.b * p.hq * p.t) { return; }
    let t = row % p.t;
    let bh = row / p.t;
    let h = bh % p.hq;
    let bb = bh / p.hq;
    let kvh = h / (p.hq / p.hkv);
    let qoff = (bb * p.t + t) * p.hq * p.hd + h * p.hd;
    let kvs = p.hkv * p.hd;
    let kvoff = bb * p.t * kvs + kvh * p.hd;
    for (var d = tid; d < p.hd; d += WG) { row_a[d] = q[qoff + d]; }
    workgroupBarrier();
    var m = -3.4028235e38;
    for (var j = tid; j <= t; j += WG) {
        var s = 0.0;
        let ko = kvoff + j * kvs;
        for (var d = 0u; d < p.hd; d++) { s += row_a[d] * k[ko + d]; }
        s = s * p.scale;
        sc[j] = s;
        m = max(m, s);
    }
    let mx = block_max(tid, m);
    var l = 0.0;
    for (var j = tid; j <= t; j += WG) {
        let e = exp(sc[j] - mx);
        sc[j] = e;
        l += e;
    }
    let sum = block_sum(tid, l);          // its barriers also publish sc[]
    for (var d = tid; d < p.hd; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j <= t; j++) { acc += sc[j] * v[kvoff + j * kvs + d]; }
        o[qoff + d] = acc / sum;
    }
    if (tid == 0u) { lse[row] = mx + log(sum); }
}

// ---------------------------------------------------------------- backward: dq (+ dsum)
@group(0) @binding(0) var<storage, read> dq_q: array<f32>;
@group(0) @binding(1) var<storage, read> dq_k: array<f32>;
@group(0) @binding(2) var<storage, read> dq_v: array<f32>;
@group(0) @binding(3) var<storage, read> dq_do: array<f32>;
@group(0) @binding(4) var<storage, read> dq_o: array<f32>;
@group(0) @binding(5) var<storage, read> dq_lse: array<f32>;
@group(0) @binding(6) var<storage, read_write> dq_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq_dsum: array<f32>;
@group(0) @binding(8) var<uniform> pq: Params;

@compute @workgroup_size(64)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= pq.b * pq.hq * pq.t) { return; }
    let t = row % pq.t;
    let bh = row / pq.t;
    let h = bh % pq.hq;
    let bb = bh / pq.hq;
    let kvh = h / (pq.hq / pq.hkv);
    let qoff = (bb * pq.t + t) * pq.hq * pq.hd + h * pq.hd;
    let kvs = pq.hkv * pq.hd;
    let kvoff = bb * pq.t * kvs + kvh * pq.hd;
    var part = 0.0;
    for (var d = tid; d < pq.hd; d += WG) {
        row_a[d] = dq_q[qoff + d];
        let g = dq_do[qoff + d];
        row_b[d] = g;
        part += g * dq_o[qoff + d];
    }
    let dsum = block_sum(tid, part);      // barriers publish row_a/row_b
    let l = dq_lse[row];
    for (var j = tid; j <= t; j += WG) {
        let ko = kvoff + j * kvs;
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < pq.hd; d++) {
            s += row_a[d] * dq_k[ko + d];
            dp += row_b[d] * dq_v[ko + d];
        }
        let pr = exp(s * pq.scale - l);
        sc[j] = pr * (dp - dsum);
    }
    workgroupBarrier();
    for (var d = tid; d < pq.hd; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j <= t; j++) { acc += sc[j] * dq_k[kvoff + j * kvs + d]; }
        dq_out[qoff + d] = acc * pq.scale;
    }
    if (tid == 0u) { dq_dsum[row] = dsum; }
}

// ---------------------------------------------------------------- backward: dk, dv
@group(0) @binding(0) var<storage, read> kv_q: array<f32>;
@group(0) @binding(1) var<storage, read> kv_k: array<f32>;
@group(0) @binding(2) var<storage, read> kv_v: array<f32>;
@group(0) @binding(3) var<storage, read> kv_do: array<f32>;
@group(0) @binding(4) var<storage, read> kv_lse: array<f32>;
@group(0) @binding(5) var<storage, read> kv_dsum: array<f32>;
@group(0) @binding(6) var<storage, read_write> kv_dk: array<f32>;
@group(0) @binding(7) var<storage, read_write> kv_dv: array<f32>;
@group(0) @binding(8) var<uniform> pk: Params;

@compute @workgroup_size(64)
fn backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;          // (b*Hkv + kvh)*T + j
    if (row >= pk.b * pk.hkv * pk.t) { return; }
    let j = row % pk.t;
    let bk = row / pk.t;
    let kvh = bk % pk.hkv;
    let bb = bk / pk.hkv;
    let g = pk.hq / pk.hkv;
    let kvs = pk.hkv * pk.hd;
    let qs = pk.hq * pk.hd;
    let kvoff = (bb * pk.t + j) * kvs + kvh * pk.hd;
    for (var d = tid; d < pk.hd; d += WG) {
        row_a[d] = kv_k[kvoff + d];
        row_b[d] = kv_v[kvoff + d];
    }
    workgroupBarrier();
    var acc_k: array<f32, 4>;              // dims tid, tid+64, ... (HDMAX / WG = 4)
    var acc_v: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) { acc_k[i] = 0.0; acc_v[i] = 0.0; }
    let nq = pk.t - j;                     // queries t = j .. T-1 see key j
    for (var hh = 0u; hh < g; hh++) {
        let h = kvh * g + hh;
        let srow0 = (bb * pk.hq + h) * pk.t;
        for (var i = tid; i < nq; i += WG) {
            let t = j + i;
            let qo = (bb * pk.t + t) * qs + h * pk.hd;
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < pk.hd; d++) {
                s += kv_q[qo + d] * row_a[d];
                dp += kv_do[qo + d] * row_b[d];
            }
            let pr = exp(s * pk.scale - kv_lse[srow0 + t]);
            sc2[i] = pr;
            sc[i] = pr * (dp - kv_dsum[srow0 + t]);
        }
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            let d = tid + c * WG;
            if (d >= pk.hd) { break; }
            var ak = 0.0;
            var av = 0.0;
            for (var i = 0u; i < nq; i++) {
                let qo = (bb * pk.t + j + i) * qs + h * pk.hd + d;
                ak += sc[i] * kv_q[qo];
                av += sc2[i] * kv_do[qo];
            }
            acc_k[c] += ak;
            acc_v[c] += av;
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let d = tid + c * WG;
        if (d >= pk.hd) { break; }
        kv_dk[kvoff + d] = acc_k[c] * pk.scale;
        kv_dv[kvoff + d] = acc_v[c];
    }
}
