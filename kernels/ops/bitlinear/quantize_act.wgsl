// Per-token absmax int8 activation quantization (BitNet b1.58 W1.58A8, transformers'
// ActQuant). Reference: reference.py `quantize_act`.
//   x f32 (N, C) -> xq int8 (N, C) packed 4 per u32 (row stride ceil(C/4) words, zero padded),
//   x_scale f32 (N,) = 127 / max(max|x|, 1e-5); xq = clamp(round(x * x_scale), -128, 127).
// WGSL f32 division is only accurate to 2.5 ulp, so 127/absmax is computed by integer long
// division and rounded half-to-even: bit-identical to IEEE (NumPy) division. The product
// x*s is correctly rounded in WGSL and round() is half-to-even, so xq matches exactly.
// One 256-invocation workgroup per row.
struct Params { rows: u32, c: u32, c4: u32 }

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> xq: array<u32>;
@group(0) @binding(2) var<storage, read_write> xs: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// Correctly rounded 127 / a for a normal, finite a >= 1e-5 (the result is then normal too).
fn div127(a: f32) -> f32 {
    let bits = bitcast<u32>(a);
    let ea = i32((bits >> 23u) & 0xffu);
    if (ea == 255) { return 0.0; }                  // absmax = inf -> 127/inf = 0
    let ma = (bits & 0x7fffffu) | 0x800000u;        // a = ma * 2^(ea - 150)
    var r = 127u << 17u;                            // 127 = (127 << 17) * 2^-17, in [2^23, 2^24)
    var e = 0;
    if (r < ma) { r = r << 1u; e = -1; }            // quotient mantissa now in [1, 2)
    var q = 0u;
    for (var i = 0u; i < 25u; i++) {                // 24 mantissa bits + 1 rounding bit
        q = q << 1u;
        if (r >= ma) { r -= ma; q |= 1u; }
        r = r << 1u;
    }
    var mant = q >> 1u;
    if ((q & 1u) == 1u && (r != 0u || (mant & 1u) == 1u)) { mant += 1u; }
    if (mant == 0x1000000u) { mant = 0x800000u; e += 1; }
    let be = u32(e + 260 - ea);                     // biased exponent of the quotient
    return bitcast<f32>((be << 23u) | (mant & 0x7fffffu));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.c;
    var m = 0.0;
    for (var i = tid; i < p.c; i += WG) { m = max(m, abs(x[base + i])); }
    red[tid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = max(red[tid], red[tid + s]); }
        workgroupBarrier();
    }
    let absmax = max(red[0], 1e-5);
    let sc = div127(absmax);
    if (tid == 0u) { xs[row] = sc; }
    for (var j = tid; j < p.c4; j += WG) {
        var v = vec4<i32>(0);
        for (var k = 0u; k < 4u; k++) {
            let idx = j * 4u + k;
            if (idx < p.c) {
                v[k] = i32(clamp(round(x[base + idx] * sc), -128.0, 127.0));
            }
        }
        xq[row * p.c4 + j] = pack4xI8Clamp(v);
    }
}
