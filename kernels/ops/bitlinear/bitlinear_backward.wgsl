// Straight-through input gradient of BitLinear: dx = dy @ (codes / weight_scale) (+ dx when
// ACC: the host first copies `acc` into dx). Reference: reference.py
// `bitlinear_backward`. dy f32 (N, OUT); w the same 2-bit packed codes as bitlinear.wgsl
// (OUT rows from row wrow0, K16 = ceil(K/16) words each); dx f32 (N, K). fp32 accumulation.
// Tiling: 16x16 invocations, 64 (n) x 64 (k) outputs per workgroup, OUT in steps of 16. Each
// invocation owns 4 consecutive n x 4 consecutive k; tiles are stored [o][n/4] and [o][k/4] as
// vec4, so the inner loop reads two vec4 per 16 FMAs.
// Entry `main8` (large N and K, where 128 x 128 tiles still fill the GPU): 16x16 invocations,
// 128 x 128 outputs per workgroup, each invocation 8 n x 8 k (two groups of 4 at offsets 0 and
// 64, so neighbouring invocations read neighbouring vec4): four vec4 reads per 64 FMAs, half
// main's workgroup-memory traffic per FMA. Same per-output sum in the same o order as main.
// OUT in steps of 8 with rows padded to 33 vec4 (2 x 8 x 33 x 16 = 8448 bytes): the dy tile's
// scalar stores then hit 32 distinct banks per warp (unpadded 32-vec4 rows put 16 stores of a
// warp on one bank: measured slower than main on an H200).
override ACC: bool = false;

struct Params { n: u32, out: u32, k: u32, k16: u32, weight_scale: f32, wrow0: u32 }

@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const TS: u32 = 64u;
const OS: u32 = 16u;
const LD4: u32 = 17u;                          // vec4 stride per o (16 + 1 pad)
var<workgroup> g_t: array<vec4<f32>, 272>;    // dy tile [o][n/4]
var<workgroup> c_t: array<vec4<f32>, 272>;    // codes tile [o][k/4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let k0 = wid.x * TS;
    let n0 = wid.y * TS;
    var acc0 = vec4<f32>(0.0);       // vec4 accumulators: registers, not an indexed array
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let nsteps = (p.out + OS - 1u) / OS;
    for (var step = 0u; step < nsteps; step++) {
        let o0 = step * OS;
        for (var r = 0u; r < 4u; r++) {
            let e = tid + 256u * r;
            let nn = e / OS;
            let oo = e % OS;
            var v = 0.0;
            if (n0 + nn < p.n && o0 + oo < p.out) { v = dy[(n0 + nn) * p.out + o0 + oo]; }
            g_t[oo * LD4 + nn / 4u][nn % 4u] = v;
        }
        if (tid < 64u) {
            let oo = tid / 4u;
            let q = tid % 4u;
            let word = k0 / 16u + q;
            var pw = 0x55555555u;
            if (o0 + oo < p.out && word < p.k16) { pw = w[(p.wrow0 + o0 + oo) * p.k16 + word]; }
            for (var f4 = 0u; f4 < 4u; f4++) {
                let x = pw >> (8u * f4);
                c_t[oo * LD4 + q * 4u + f4] = vec4<f32>(vec4<i32>(i32(x & 3u), i32((x >> 2u) & 3u),
                    i32((x >> 4u) & 3u), i32((x >> 6u) & 3u)) - vec4<i32>(1));
            }
        }
        workgroupBarrier();
        for (var o = 0u; o < OS; o++) {
            let gv = g_t[o * LD4 + lid.y];
            let cv = c_t[o * LD4 + lid.x];
            acc0 += gv.x * cv;
            acc1 += gv.y * cv;
            acc2 += gv.z * cv;
            acc3 += gv.w * cv;
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let n = n0 + lid.y * 4u + i;
        if (n >= p.n) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let k = k0 + lid.x * 4u + j;
            if (k >= p.k) { continue; }
            var v = accs[i][j] / p.weight_scale;
            if (ACC) { v = dx[n * p.k + k] + v; }
            dx[n * p.k + k] = v;
        }
    }
}

const T8: u32 = 128u;
const OS8: u32 = 8u;                           // o per step
const LD8: u32 = 33u;                          // vec4 per o row of a 128-wide tile (+1 pad)
var<workgroup> g8: array<vec4<f32>, 264>;     // dy tile [o][n/4], OS8 x LD8
var<workgroup> c8: array<vec4<f32>, 264>;     // codes tile [o][k/4]

fn store8(n: u32, k0: u32, v: vec4<f32>) {
    if (n >= p.n) { return; }
    for (var j = 0u; j < 4u; j++) {
        let k = k0 + j;
        if (k >= p.k) { continue; }
        var x = v[j] / p.weight_scale;
        if (ACC) { x = dx[n * p.k + k] + x; }
        dx[n * p.k + k] = x;
    }
}

@compute @workgroup_size(16, 16)
fn main8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let k0 = wid.x * T8;
    let n0 = wid.y * T8;
    // acc{i}{h}{g}: n group i (rows lid.y*4 + i + 64*h), k group g (cols lid.x*4 + 64*g)
    var a00 = vec4<f32>(0.0); var a01 = vec4<f32>(0.0); var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a30 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0);
    var b00 = vec4<f32>(0.0); var b01 = vec4<f32>(0.0); var b10 = vec4<f32>(0.0); var b11 = vec4<f32>(0.0);
    var b20 = vec4<f32>(0.0); var b21 = vec4<f32>(0.0); var b30 = vec4<f32>(0.0); var b31 = vec4<f32>(0.0);
    let nsteps = (p.out + OS8 - 1u) / OS8;
    for (var step = 0u; step < nsteps; step++) {
        let o0 = step * OS8;
        // dy tile: 128 n x 8 o, 4 per invocation; consecutive invocations walk o (contiguous)
        for (var r = 0u; r < 4u; r++) {
            let e = tid + 256u * r;
            let nn = e / OS8;
            let oo = e % OS8;
            var v = 0.0;
            if (n0 + nn < p.n && o0 + oo < p.out) { v = dy[(n0 + nn) * p.out + o0 + oo]; }
            g8[oo * LD8 + nn / 4u][nn % 4u] = v;
        }
        // codes tile: 8 o x 8 words (128 k); invocations 0..63 decode one word each
        if (tid < 64u) {
            let oo = tid / 8u;
            let q = tid % 8u;
            let word = k0 / 16u + q;
            var pw = 0x55555555u;
            if (o0 + oo < p.out && word < p.k16) { pw = w[(p.wrow0 + o0 + oo) * p.k16 + word]; }
            for (var f4 = 0u; f4 < 4u; f4++) {
                let x = pw >> (8u * f4);
                c8[oo * LD8 + q * 4u + f4] = vec4<f32>(vec4<i32>(i32(x & 3u), i32((x >> 2u) & 3u),
                    i32((x >> 4u) & 3u), i32((x >> 6u) & 3u)) - vec4<i32>(1));
            }
        }
        workgroupBarrier();
        for (var o = 0u; o < OS8; o++) {
            let g0 = g8[o * LD8 + lid.y];
            let g1 = g8[o * LD8 + 16u + lid.y];
            let c0 = c8[o * LD8 + lid.x];
            let c1 = c8[o * LD8 + 16u + lid.x];
            a00 += g0.x * c0; a01 += g0.x * c1;
            a10 += g0.y * c0; a11 += g0.y * c1;
            a20 += g0.z * c0; a21 += g0.z * c1;
            a30 += g0.w * c0; a31 += g0.w * c1;
            b00 += g1.x * c0; b01 += g1.x * c1;
            b10 += g1.y * c0; b11 += g1.y * c1;
            b20 += g1.z * c0; b21 += g1.z * c1;
            b30 += g1.w * c0; b31 += g1.w * c1;
        }
        workgroupBarrier();
    }
    let na = n0 + lid.y * 4u;
    let nb = na + 64u;
    let ka = k0 + lid.x * 4u;
    let kb = ka + 64u;
    store8(na, ka, a00); store8(na, kb, a01);
    store8(na + 1u, ka, a10); store8(na + 1u, kb, a11);
    store8(na + 2u, ka, a20); store8(na + 2u, kb, a21);
    store8(na + 3u, ka, a30); store8(na + 3u, kb, a31);
    store8(nb, ka, b00); store8(nb, kb, b01);
    store8(nb + 1u, ka, b10); store8(nb + 1u, kb, b11);
    store8(nb + 2u, ka, b20); store8(nb + 2u, kb, b21);
    store8(nb + 3u, ka, b30); store8(nb + 3u, kb, b31);
}
