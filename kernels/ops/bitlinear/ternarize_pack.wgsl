// Second pass of absmean ternarization: see ternarize.wgsl (entry `absmean`) for the layout.
// Reference: reference.py `ternarize` (codes), gpu.py `pack_codes_2bit`
// (layout). w f32 (OUT, K), scales f32 -> packed u32 (OUT, K16).
struct Params { out: u32, k: u32, k16: u32, slot: u32 }

@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.out * p.k16) { return; }
    let row = i / p.k16;
    let j = i - row * p.k16;
    let s = scales[p.slot];
    var word = 0u;
    for (var f = 0u; f < 16u; f++) {
        let col = j * 16u + f;
        var code = 1u;                                   // padding: zero weight
        if (col < p.k) {
            code = u32(i32(clamp(round(w[row * p.k + col] * s), -1.0, 1.0)) + 1);
        }
        word |= code << (2u * f);
    }
    packed[i] = word;
}
