// Straight-through input gradient of BitLinear with packed-f16 multiply-adds (HFMA2 on NVIDIA:
// twice the fp32 FMA rate, NVIDIA Hopper tuning guide). Reference: reference.py
// `bitlinear_backward_f16`; the fp32 reference path is bitlinear_backward.wgsl (same tiles,
// same dispatch shapes). A module of its own: `enable f16;` would stop the fp32 shader from
// compiling on devices without the `shader-f16` feature.
//
// Why f16 is safe here: every product dy * code has code in {-1, 0, +1}, so it is exact in any
// precision; the only roundings are dy to f16 and the f16 partial sums.
// 1. Entry `rows`, one workgroup per dy row n: e_n = clamp(TOP + 126 - E_n, -126, 126) with
//    E_n the biased f32 exponent of max|dy_n|, so max|dy_n| * 2^e_n lies in [2^(TOP-1), 2^TOP)
//    (a power of two: exact). Writes dy16 (N, OP) f16 = f16(dy * 2^e_n), OP = OUT rounded up to
//    16 (zero padded), and rs (N,) f32 = 2^-e_n (exact). Zero rows get e = 126 (all zeros
//    anyway); rows with max|dy| below ~2^(TOP-127) are scaled less (those values are < 1e-35).
// 2. Entries `main` (64 x 64 outputs) and `main8` (128 x 128), OUT in steps of 16: f16 partial
//    sums over CH consecutive o (chunks start at o = 0, multiples of CH), each chunk then added
//    into f32 accumulators in chunk order; dx = f32 sum * rs[n] / weight_scale (+ dx if ACC).
//    Overflow bound: |term| <= 2^TOP after rounding, so |chunk sum| <= CH * 2^TOP = 2^15 <
//    65504 with TOP = 15 - log2(CH) (the host sets both). Error bound per output, u = 2^-11:
//    |dx16 - dx| <= (CH * u + (OUT/CH + 3) * 2^-24) * sum_o |dy_o| |code_o| / weight_scale
//    (to first order; dy rounding u, chunk sums (CH - 1) u, f32 chunk adds and the scale).
// WGSL lets f16 conversion and addition round to either neighbour; drivers that round to
// nearest even (lavapipe, NVIDIA) give the reference's bits up to the final f32 division.
enable f16;

override ACC: bool = false;
override CH: u32 = 32u;                 // o per f16 partial sum: 16, 32 or 64 (multiple of OS)
// Codes to f16 by integer compares and selects (true) or by i32 -> f16 conversions (false);
// the same values. Conversions issue at a fraction of the integer rate on NVIDIA GPUs (CUDA C++
// Programming Guide, arithmetic instruction throughput). (A bitcast of packed bits to
// vec2<f16> would be cheaper still, but naga 0.32 types it as f32 and rejects the shader.)
override SELECT_DECODE: bool = false;

// ---------------------------------------------------------------- rows: exponent and f16 copy
struct RParams { n: u32, out: u32, op2: u32, top: i32 }

@group(0) @binding(0) var<storage, read> r_dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> r_dy16: array<vec2<f16>>;
@group(0) @binding(2) var<storage, read_write> r_rs: array<f32>;
@group(0) @binding(3) var<uniform> rp: RParams;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= rp.n) { return; }
    let base = row * rp.out;
    var m = 0.0;
    for (var i = tid; i < rp.out; i += 256u) { m = max(m, abs(r_dy[base + i])); }
    red[tid] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = max(red[tid], red[tid + s]); }
        workgroupBarrier();
    }
    // the exponent field of max|dy| (>= 0): inf gives e = -126, so inf stays inf in f16
    let eb = i32((bitcast<u32>(red[0]) >> 23u) & 0xffu);
    let e = clamp(rp.top + 126 - eb, -126, 126);
    let up = bitcast<f32>(u32(127 + e) << 23u);
    if (tid == 0u) { r_rs[row] = bitcast<f32>(u32(127 - e) << 23u); }
    for (var j = tid; j < rp.op2; j += 256u) {
        let o = 2u * j;
        var a = 0.0;
        var b = 0.0;
        if (o < rp.out) { a = r_dy[base + o] * up; }
        if (o + 1u < rp.out) { b = r_dy[base + o + 1u] * up; }
        r_dy16[row * rp.op2 + j] = vec2<f16>(vec2<f32>(a, b));
    }
}

// ---------------------------------------------------------------- main / main8: dx
struct Params { n: u32, out: u32, op4: u32, k: u32, k16: u32, weight_scale: f32, wrow0: u32 }

@group(0) @binding(0) var<storage, read> dy16: array<vec4<f16>>;   // (N, OP) row-major
@group(0) @binding(1) var<storage, read> rs: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const OS: u32 = 16u;                    // o per barrier step (both entries)

// Codes of the low byte of x (four 2-bit fields, code + 1) as f16.
fn codes4(x: u32) -> vec4<f16> {
    let f = vec4<u32>(x & 3u, (x >> 2u) & 3u, (x >> 4u) & 3u, (x >> 6u) & 3u);
    if (SELECT_DECODE) {
        let one = vec4<f16>(1.0h);
        return select(select(vec4<f16>(0.0h), one, f == vec4<u32>(2u)), -one, f == vec4<u32>(0u));
    }
    return vec4<f16>(vec4<i32>(f) - vec4<i32>(1));
}

fn store(n: u32, k0: u32, v: vec4<f32>) {
    if (n >= p.n) { return; }
    let r = rs[n];
    for (var j = 0u; j < 4u; j++) {
        let k = k0 + j;
        if (k >= p.k) { continue; }
        var x = v[j] * r / p.weight_scale;
        if (ACC) { x = dx[n * p.k + k] + x; }
        dx[n * p.k + k] = x;
    }
}

// 64 x 64 tile: 16x16 invocations, each 4 n x 4 k (as main of bitlinear_backward.wgsl).
const TS: u32 = 64u;
const LD4: u32 = 17u;                   // vec4 stride per o (16 + 1 pad)
var<workgroup> g_t: array<vec4<f16>, 272>;    // dy tile [o][n/4]
var<workgroup> c_t: array<vec4<f16>, 272>;    // codes tile [o][k/4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let k0 = wid.x * TS;
    let n0 = wid.y * TS;
    var h0 = vec4<f16>(0.0h); var h1 = vec4<f16>(0.0h);     // f16 partial sums of a chunk
    var h2 = vec4<f16>(0.0h); var h3 = vec4<f16>(0.0h);
    var s0 = vec4<f32>(0.0); var s1 = vec4<f32>(0.0);       // f32 sums of the chunks
    var s2 = vec4<f32>(0.0); var s3 = vec4<f32>(0.0);
    let nsteps = (p.out + OS - 1u) / OS;
    let per = CH / OS;
    for (var step = 0u; step < nsteps; step++) {
        let o0 = step * OS;
        // dy tile: 64 n x 16 o, one vec4<f16> (4 o of one row) per invocation, transposed
        let nn = tid / 4u;
        let q = tid % 4u;
        var v = vec4<f16>(0.0h);
        if (n0 + nn < p.n) { v = dy16[(n0 + nn) * p.op4 + o0 / 4u + q]; }
        let gi = 4u * q * LD4 + nn / 4u;
        let gc = nn % 4u;
        g_t[gi][gc] = v.x;
        g_t[gi + LD4][gc] = v.y;
        g_t[gi + 2u * LD4][gc] = v.z;
        g_t[gi + 3u * LD4][gc] = v.w;
        // codes tile: 16 o x 4 words (64 k); invocations 0..63 decode one word each
        if (tid < 64u) {
            let oo = tid / 4u;
            let qw = tid % 4u;
            let word = k0 / 16u + qw;
            var pw = 0x55555555u;
            if (o0 + oo < p.out && word < p.k16) { pw = w[(p.wrow0 + o0 + oo) * p.k16 + word]; }
            for (var f4 = 0u; f4 < 4u; f4++) { c_t[oo * LD4 + qw * 4u + f4] = codes4(pw >> (8u * f4)); }
        }
        workgroupBarrier();
        for (var o = 0u; o < OS; o++) {
            let gv = g_t[o * LD4 + lid.y];
            let cv = c_t[o * LD4 + lid.x];
            h0 = fma(vec4<f16>(gv.x), cv, h0);
            h1 = fma(vec4<f16>(gv.y), cv, h1);
            h2 = fma(vec4<f16>(gv.z), cv, h2);
            h3 = fma(vec4<f16>(gv.w), cv, h3);
        }
        workgroupBarrier();
        if ((step + 1u) % per == 0u || step + 1u == nsteps) {
            s0 += vec4<f32>(h0); h0 = vec4<f16>(0.0h);
            s1 += vec4<f32>(h1); h1 = vec4<f16>(0.0h);
            s2 += vec4<f32>(h2); h2 = vec4<f16>(0.0h);
            s3 += vec4<f32>(h3); h3 = vec4<f16>(0.0h);
        }
    }
    let na = n0 + lid.y * 4u;
    let ka = k0 + lid.x * 4u;
    store(na, ka, s0);
    store(na + 1u, ka, s1);
    store(na + 2u, ka, s2);
    store(na + 3u, ka, s3);
}

// 128 x 128 tile: 16x16 invocations, each 8 n x 8 k in two groups of 4 at offsets 0 and 64
// (as main8 of bitlinear_backward.wgsl); rows padded to 33 vec4 against bank conflicts.
const T8: u32 = 128u;
const LD8: u32 = 33u;
var<workgroup> g8: array<vec4<f16>, 528>;     // dy tile [o][n/4], OS x LD8
var<workgroup> c8: array<vec4<f16>, 528>;     // codes tile [o][k/4]

@compute @workgroup_size(16, 16)
fn main8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let k0 = wid.x * T8;
    let n0 = wid.y * T8;
    // {a,b}{i}{g}: n group i (rows lid.y*4 + i, + 64 for b), k group g (cols lid.x*4 + 64*g)
    var a00 = vec4<f16>(0.0h); var a01 = vec4<f16>(0.0h); var a10 = vec4<f16>(0.0h); var a11 = vec4<f16>(0.0h);
    var a20 = vec4<f16>(0.0h); var a21 = vec4<f16>(0.0h); var a30 = vec4<f16>(0.0h); var a31 = vec4<f16>(0.0h);
    var b00 = vec4<f16>(0.0h); var b01 = vec4<f16>(0.0h); var b10 = vec4<f16>(0.0h); var b11 = vec4<f16>(0.0h);
    var b20 = vec4<f16>(0.0h); var b21 = vec4<f16>(0.0h); var b30 = vec4<f16>(0.0h); var b31 = vec4<f16>(0.0h);
    var sa00 = vec4<f32>(0.0); var sa01 = vec4<f32>(0.0); var sa10 = vec4<f32>(0.0); var sa11 = vec4<f32>(0.0);
    var sa20 = vec4<f32>(0.0); var sa21 = vec4<f32>(0.0); var sa30 = vec4<f32>(0.0); var sa31 = vec4<f32>(0.0);
    var sb00 = vec4<f32>(0.0); var sb01 = vec4<f32>(0.0); var sb10 = vec4<f32>(0.0); var sb11 = vec4<f32>(0.0);
    var sb20 = vec4<f32>(0.0); var sb21 = vec4<f32>(0.0); var sb30 = vec4<f32>(0.0); var sb31 = vec4<f32>(0.0);
    let nsteps = (p.out + OS - 1u) / OS;
    let per = CH / OS;
    for (var step = 0u; step < nsteps; step++) {
        let o0 = step * OS;
        // dy tile: 128 n x 16 o, two vec4<f16> per invocation (4 o of one row each), transposed
        for (var r = 0u; r < 2u; r++) {
            let e = tid + 256u * r;
            let nn = e / 4u;
            let q = e % 4u;
            var v = vec4<f16>(0.0h);
            if (n0 + nn < p.n) { v = dy16[(n0 + nn) * p.op4 + o0 / 4u + q]; }
            let gi = 4u * q * LD8 + nn / 4u;
            let gc = nn % 4u;
            g8[gi][gc] = v.x;
            g8[gi + LD8][gc] = v.y;
            g8[gi + 2u * LD8][gc] = v.z;
            g8[gi + 3u * LD8][gc] = v.w;
        }
        // codes tile: 16 o x 8 words (128 k); invocations 0..127 decode one word each
        if (tid < 128u) {
            let oo = tid / 8u;
            let qw = tid % 8u;
            let word = k0 / 16u + qw;
            var pw = 0x55555555u;
            if (o0 + oo < p.out && word < p.k16) { pw = w[(p.wrow0 + o0 + oo) * p.k16 + word]; }
            for (var f4 = 0u; f4 < 4u; f4++) { c8[oo * LD8 + qw * 4u + f4] = codes4(pw >> (8u * f4)); }
        }
        workgroupBarrier();
        for (var o = 0u; o < OS; o++) {
            let g0 = g8[o * LD8 + lid.y];
            let g1 = g8[o * LD8 + 16u + lid.y];
            let c0 = c8[o * LD8 + lid.x];
            let c1 = c8[o * LD8 + 16u + lid.x];
            a00 = fma(vec4<f16>(g0.x), c0, a00); a01 = fma(vec4<f16>(g0.x), c1, a01);
            a10 = fma(vec4<f16>(g0.y), c0, a10); a11 = fma(vec4<f16>(g0.y), c1, a11);
            a20 = fma(vec4<f16>(g0.z), c0, a20); a21 = fma(vec4<f16>(g0.z), c1, a21);
            a30 = fma(vec4<f16>(g0.w), c0, a30); a31 = fma(vec4<f16>(g0.w), c1, a31);
            b00 = fma(vec4<f16>(g1.x), c0, b00); b01 = fma(vec4<f16>(g1.x), c1, b01);
            b10 = fma(vec4<f16>(g1.y), c0, b10); b11 = fma(vec4<f16>(g1.y), c1, b11);
            b20 = fma(vec4<f16>(g1.z), c0, b20); b21 = fma(vec4<f16>(g1.z), c1, b21);
            b30 = fma(vec4<f16>(g1.w), c0, b30); b31 = fma(vec4<f16>(g1.w), c1, b31);
        }
        workgroupBarrier();
        if ((step + 1u) % per == 0u || step + 1u == nsteps) {
            sa00 += vec4<f32>(a00); a00 = vec4<f16>(0.0h); sa01 += vec4<f32>(a01); a01 = vec4<f16>(0.0h);
            sa10 += vec4<f32>(a10); a10 = vec4<f16>(0.0h); sa11 += vec4<f32>(a11); a11 = vec4<f16>(0.0h);
            sa20 += vec4<f32>(a20); a20 = vec4<f16>(0.0h); sa21 += vec4<f32>(a21); a21 = vec4<f16>(0.0h);
            sa30 += vec4<f32>(a30); a30 = vec4<f16>(0.0h); sa31 += vec4<f32>(a31); a31 = vec4<f16>(0.0h);
            sb00 += vec4<f32>(b00); b00 = vec4<f16>(0.0h); sb01 += vec4<f32>(b01); b01 = vec4<f16>(0.0h);
            sb10 += vec4<f32>(b10); b10 = vec4<f16>(0.0h); sb11 += vec4<f32>(b11); b11 = vec4<f16>(0.0h);
            sb20 += vec4<f32>(b20); b20 = vec4<f16>(0.0h); sb21 += vec4<f32>(b21); b21 = vec4<f16>(0.0h);
            sb30 += vec4<f32>(b30); b30 = vec4<f16>(0.0h); sb31 += vec4<f32>(b31); b31 = vec4<f16>(0.0h);
        }
    }
    let na = n0 + lid.y * 4u;
    let nb = na + 64u;
    let ka = k0 + lid.x * 4u;
    let kb = ka + 64u;
    store(na, ka, sa00); store(na, kb, sa01);
    store(na + 1u, ka, sa10); store(na + 1u, kb, sa11);
    store(na + 2u, ka, sa20); store(na + 2u, kb, sa21);
    store(na + 3u, ka, sa30); store(na + 3u, kb, sa31);
    store(nb, ka, sb00); store(nb, kb, sb01);
    store(nb + 1u, ka, sb10); store(nb + 1u, kb, sb11);
    store(nb + 2u, ka, sb20); store(nb + 2u, kb, sb21);
    store(nb + 3u, ka, sb30); store(nb + 3u, kb, sb31);
}
