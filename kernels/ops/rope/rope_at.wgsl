// RoPE of M consecutive tokens of one sequence at positions pos .. pos+M-1 (decode with a KV
// cache). Reference: reference.py `rope_at` (= `rope` with a position offset).
// x, y f32 (M, H*hd); cos/sin f32 (>= pos+M, hd/2) from reference.rope_tables (host).
// One invocation per rotated pair (n, h, j < hd/2).
struct Params { total: u32, pos: u32, h: u32, hd: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    let h2 = p.hd / 2u;
    let per_tok = p.h * h2;
    let n = i / per_tok;
    let rem = i - n * per_tok;
    let hh = rem / h2;
    let j = rem - hh * h2;
    let pos = p.pos + n;
    let c = cos_t[pos * h2 + j];
    let s = sin_t[pos * h2 + j];
    let base = n * p.h * p.hd + hh * p.hd;
    let x1 = x[base + j];
    let x2 = x[base + h2 + j];
    y[base + j] = x1 * c - x2 * s;
    y[base + h2 + j] = x2 * c + x1 * s;
}
