// Dequantized int8 activations for the straight-through weight gradient
// dW = dy^T @ (xq / x_scale). Reference: reference.py `dequantize_act`.
//   xq int8 (N, C) packed 4 per u32 (row stride C4 = ceil(C/4), quantize_act's layout),
//   xs f32 (N,) -> y f32 (N, C) = f32(xq) / xs[n]. WGSL division: within 2.5 ulp of NumPy's.
// One invocation per output element.
struct Params { total: u32, c: u32, c4: u32 }

@group(0) @binding(0) var<storage, read> xq: array<u32>;
@group(0) @binding(1) var<storage, read> xs: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    let n = i / p.c;
    let c = i - n * p.c;
    let word = xq[n * p.c4 + c / 4u];
    let v = unpack4xI8(word)[c % 4u];
    y[i] = f32(v) / xs[n];
}
