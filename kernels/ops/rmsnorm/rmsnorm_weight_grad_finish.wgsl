// Second pass of rmsnorm_weight_grad (see rmsnorm_weight_grad.wgsl): dw[c] = sum over chunks
// of part[chunk, c], in chunk order. part f32 (chunks, C) -> dw f32 (C,).
struct Params { n: u32, c: u32, chunks: u32 }

@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> dw: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = gid.x + gid.y * nwg.x * 256u;
    if (col >= p.c) { return; }
    var s = 0.0;
    for (var k = 0u; k < p.chunks; k++) { s += part[k * p.c + col]; }
    dw[col] = s;
}
