// embedding: out[n, c] = table[ids[n], c].  Reference: reference.py `embedding`.
// ids i32 (N,), table (V, D) as raw u32 words: float32 (F16 = false, one word per element) or
// float16 (F16 = true, element i is half i&1 of word i>>1, read with unpack2x16float: core
// WGSL, no shader-f16 feature), out f32 (N, D). One invocation per output element.
// Negative ids wrap like NumPy (id + V); ids out of range write 0 (the host raises IndexError
// first whenever it knows the ids' range).
override F16: bool = false;

struct Params { total: u32, d: u32, v: u32 }

@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn load_table(i: u32) -> f32 {
    if (F16) { return unpack2x16float(table[i >> 1u])[i & 1u]; }
    return bitcast<f32>(table[i]);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    let n = i / p.d;
    let c = i - n * p.d;
    var id = ids[n];
    if (id < 0) { id = id + i32(p.v); }
    if (id < 0 || u32(id) >= p.v) { out[i] = 0.0; return; }
    out[i] = load_table(u32(id) * p.d + c);
}
