// KV-cache append, in place: cache[pos*C + i] = x[i] for i < M*C (rows pos .. pos+M-1).
// Reference: reference.py `kv_append_`. cache f32 (Lmax, C), x f32 (M, C).
struct Params { total: u32, offset: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> cache: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    cache[p.offset + i] = x[i];
}
