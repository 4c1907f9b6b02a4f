// lm_head + softmax cross-entropy over one vocab chunk at a time (the (N, V) logits are never
// whole). Reference: reference.py `lm_head_cross_entropy` (online log-sum-exp,
// Milakov & Gimelshein 2018). The host loops over chunks [v0, v0 + vc):
//   matmul (TRANS_B, b = table rows v0..)   logits (N, vc) = x Wc^T
//   stats                                   running max m, sum s, target logit; P = exp(l - m')
//                                           in place of the logits; acc *= exp(m - m') (GRAD)
//   matmul (ACC, b = table rows v0..)       acc += P Wc                               (GRAD)
// then `finish`: loss = m + log s - l_t; dx = grad_scale * (acc / s - W[t]) in place of acc.
// st f32 (N, 4): m, s, l_t, unused. targets i32 (N,), < 0 = padding (loss 0, dx 0).
// table: raw u32 words, float32 or float16 (F16; unpack2x16float, as matmul.wgsl).
// One 256-invocation workgroup per row in both entries.
override GRAD: bool = true;
override F16: bool = false;

const WG: u32 = 256u;
const NEG: f32 = -0x1.fffffep+127f;   // -FLT_MAX, exact (Tint rejects a decimal literal that rounds to it)
var<workgroup> red: array<f32, 256>;

fn reduce_max(tid: u32, v: f32) -> f32 {
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

fn reduce_sum(tid: u32, v: f32) -> f32 {
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

// ---------------------------------------------------------------- per chunk
struct SParams { rows: u32, vc: u32, v0: u32, d: u32, first: u32 }

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> s_targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> s_st: array<f32>;
@group(0) @binding(3) var<storage, read_write> s_acc: array<f32>;
@group(0) @binding(4) var<uniform> sp: SParams;

@compute @workgroup_size(256)
fn stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= sp.rows) { return; }      // uniform per workgroup: barriers stay uniform
    let base = row * sp.vc;
    let first = sp.first != 0u;
    // read the running state and the target's logit before anything below overwrites them
    let m_old = select(s_st[row * 4u], NEG, first);
    let s_old = select(s_st[row * 4u + 1u], 0.0, first);
    let t = s_targets[row];
    let here = t >= i32(sp.v0) && t < i32(sp.v0 + sp.vc);
    var tl = 0.0;
    if (here) { tl = logits[base + u32(t) - sp.v0]; }
    var mx = NEG;
    for (var i = tid; i < sp.vc; i += WG) { mx = max(mx, logits[base + i]); }
    let m_new = max(m_old, reduce_max(tid, mx));
    var se = 0.0;
    for (var i = tid; i < sp.vc; i += WG) {
        let e = exp(logits[base + i] - m_new);
        se += e;
        if (GRAD) { logits[base + i] = e; }
    }
    let cs = reduce_sum(tid, se);
    let r = exp(m_old - m_new);
    if (tid == 0u) {
        s_st[row * 4u] = m_new;
        s_st[row * 4u + 1u] = s_old * r + cs;
        if (here) { s_st[row * 4u + 2u] = tl; } else if (first) { s_st[row * 4u + 2u] = 0.0; }
    }
    if (GRAD) {
        let ab = row * sp.d;
        for (var c = tid; c < sp.d; c += WG) {
            s_acc[ab + c] = select(s_acc[ab + c] * r, 0.0, first);
        }
    }
}

// ---------------------------------------------------------------- after the last chunk
struct FParams { rows: u32, d: u32, v: u32, grad_scale: f32 }

@group(0) @binding(0) var<storage, read> f_st: array<f32>;
@group(0) @binding(1) var<storage, read> f_targets: array<i32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> f_acc: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<uniform> fp: FParams;

fn load_table(i: u32) -> f32 {
    if (F16) { return unpack2x16float(table[i >> 1u])[i & 1u]; }
    return bitcast<f32>(table[i]);
}

@compute @workgroup_size(256)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= fp.rows) { return; }
    let m = f_st[row * 4u];
    let s = f_st[row * 4u + 1u];
    let t = f_targets[row];
    let valid = t >= 0 && u32(t) < fp.v;
    if (tid == 0u) {
        loss[row] = select(0.0, (m + log(s)) - f_st[row * 4u + 2u], valid);
    }
    if (GRAD) {
        let ab = row * fp.d;
        let tb = select(0u, u32(t), valid) * fp.d;
        let sc = select(0.0, fp.grad_scale, valid);
        for (var c = tid; c < fp.d; c += WG) {
            f_acc[ab + c] = (f_acc[ab + c] / s - load_table(tb + c)) * sc;
        }
    }
}
