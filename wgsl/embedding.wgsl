// embedding: out[n, c] = table[ids[n], c].  Reference: kernels/reference.py `embedding`.
// ids i32 (N,), table f32 (V, D), out f32 (N, D). One invocation per output element.
// Negative ids wrap like NumPy (id + V); ids out of range write 0 (the host raises IndexError
// first whenever it knows the ids' range).
struct Params { total: u32, d: u32, v: u32 }

@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    let n = i / p.d;
    let c = i - n * p.d;
    var id = ids[n];
    if (id < 0) { id = id + i32(p.v); }
    if (id < 0 || u32(id) >= p.v) { out[i] = 0.0; return; }
    out[i] = table[u32(id) * p.d + c];
}
