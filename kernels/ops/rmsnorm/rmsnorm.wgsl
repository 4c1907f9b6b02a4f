// RMSNorm forward and input backward (weight frozen). Reference: reference.py
// `rmsnorm`, `rmsnorm_backward`. One 256-invocation workgroup per row (token).
//   forward:  x (N, C), w (C,) -> y (N, C) = w * x * rstd, rstd (N,) = 1/sqrt(mean(x^2) + eps)
//   backward: dy, x (N, C), w (C,), rstd (N,) -> dx = r*g - x*r^3*mean(g*x), g = w*dy
struct Params { rows: u32, c: u32, eps: f32 }

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

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

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.c;
    var ss = 0.0;
    for (var i = tid; i < p.c; i += WG) {
        let v = x[base + i];
        ss += v * v;
    }
    let total = block_sum(tid, ss);
    let r = 1.0 / sqrt(total / f32(p.c) + p.eps);
    for (var i = tid; i < p.c; i += WG) {
        y[base + i] = (x[base + i] * r) * w[i];
    }
    if (tid == 0u) { rstd[row] = r; }
}

@group(0) @binding(0) var<storage, read> b_dy: array<f32>;
@group(0) @binding(1) var<storage, read> b_x: array<f32>;
@group(0) @binding(2) var<storage, read> b_w: array<f32>;
@group(0) @binding(3) var<storage, read> b_rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_dx: array<f32>;
@group(0) @binding(5) var<uniform> bp: Params;

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= bp.rows) { return; }
    let base = row * bp.c;
    var s = 0.0;
    for (var i = tid; i < bp.c; i += WG) {
        s += (b_dy[base + i] * b_w[i]) * b_x[base + i];
    }
    let mean_gx = block_sum(tid, s) / f32(bp.c);
    let r = b_rstd[row];
    let r3 = (r * r) * r;
    for (var i = tid; i < bp.c; i += WG) {
        let g = b_dy[base + i] * b_w[i];
        b_dx[base + i] = r * g - (b_x[base + i] * r3) * mean_gx;
    }
}
