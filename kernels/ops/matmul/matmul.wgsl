// Dense fp32 matmul: c = alpha * op(a) @ op(b) (+ c when ACC: the host first copies `acc`
// into c). Reference: reference.py `matmul`. op(a) (M, K): a stored (M, K), or (K, M)
// with TRANS_A; op(b) (K, N): b stored (K, N), or (N, K) with TRANS_B; c f32 (M, N).
// Used for LoRA A/B forward and backward and the lm_head.
// b is bound as raw u32 words: float32 (B_F16 = false, bitcast) or float16 (B_F16 = true,
// element i is half i&1 of word i>>1, read with unpack2x16float: core WGSL, no shader-f16
// feature; math stays f32). b_off: element offset of op(b)'s first element in b (the lm_head
// reads a chunk of vocab rows of the embedding table in place).
// Tiling: 16x16 invocations, 64x64 outputs per workgroup, K steps of 16. Each invocation owns
// 4 consecutive rows x 4 consecutive columns, so the inner loop reads one vec4 of a and one of
// b from workgroup memory per 16 FMAs (scalar loads made shared memory the limit).
// Split-K (SPLIT, for skinny outputs such as LoRA's (N, r) with few tiles): workgroup z sums
// K range [z*kchunk, (z+1)*kchunk) into partial slab z of c (S, M, N); entry `reduce` then
// adds the S slabs in order (deterministic), applies alpha and ACC.
// Entry `main8` (large M and N, where 128 x 128 tiles still fill the GPU: the lm_head's
// logits and gradient rows): 16x16 invocations, 128 x 128 outputs per workgroup, K steps of
// KS8 (8 or 16);
// each invocation owns 8 m x 8 n (two groups of 4 at offsets 0 and 64, so neighbouring
// invocations read neighbouring vec4): four vec4 reads of workgroup memory per 64 FMAs, half of
// main's. Every output is the same sum of the same products in the same k order as main (one
// accumulator per output, k = k_lo, k_lo + 1, ...; the same `acc += a * b` form), so the two
// entries give the same bits. Tiles padded to 33 vec4 per k, sized for KS8 = 16 (2 x 16 x 33 x
// 16 = 16896 bytes of workgroup memory, over WebGPU's 16 KiB minimum: the host runs main8 only
// on devices with that much). The model is bitlinear_backward.wgsl main8.
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ACC: bool = false;
override SPLIT: bool = false;
override B_F16: bool = false;
// B_PAIRS (with B_F16, set by the host only where every pair of elements a word holds is two
// neighbours along b's contiguous axis in one tile row: b_off and b's row length even): the b
// tile loads one word per two elements and unpacks both (the same values, half the loads).
override B_PAIRS: bool = false;
// main8's k per step: 8 or 16 (its tiles are sized for 16)
override KS8: u32 = 8u;

struct Params { m: u32, n: u32, k: u32, alpha: f32, kchunk: u32, b_off: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn load_b(i: u32) -> f32 {
    if (B_F16) { return unpack2x16float(b[i >> 1u])[i & 1u]; }
    return bitcast<f32>(b[i]);
}

const TS: u32 = 64u;
const KS: u32 = 16u;
const LD4: u32 = 17u;     // tile row stride in vec4 (16 + 1 pad: stores along k spread banks)
var<workgroup> a_t: array<vec4<f32>, 272>;   // KS * LD4: [k][m/4]
var<workgroup> b_t: array<vec4<f32>, 272>;   // KS * LD4: [k][n/4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * TS;
    let m0 = wid.y * TS;
    // four vec4 accumulators (rows i, columns j): constant indices keep them in registers
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let k_lo = wid.z * p.kchunk;
    let k_hi = min(p.k, k_lo + p.kchunk);
    let nsteps = (k_hi - min(k_lo, k_hi) + KS - 1u) / KS;
    for (var step = 0u; step < nsteps; step++) {
        let k0 = k_lo + step * KS;
        for (var r = 0u; r < 4u; r++) {
            let e = tid + 256u * r;
            // a tile: 64 (m) x 16 (k); consecutive invocations walk a's contiguous axis
            var mm: u32; var kk: u32;
            if (TRANS_A) { mm = e % TS; kk = e / TS; } else { mm = e / KS; kk = e % KS; }
            var av = 0.0;
            if (m0 + mm < p.m && k0 + kk < k_hi) {
                if (TRANS_A) { av = a[(k0 + kk) * p.m + m0 + mm]; }
                else { av = a[(m0 + mm) * p.k + k0 + kk]; }
            }
            a_t[kk * LD4 + mm / 4u][mm % 4u] = av;
            // b tile: 16 (k) x 64 (n)
            if (!B_PAIRS) {
                var nn: u32; var kb: u32;
                if (TRANS_B) { nn = e / KS; kb = e % KS; } else { nn = e % TS; kb = e / TS; }
                var bv = 0.0;
                if (n0 + nn < p.n && k0 + kb < k_hi) {
                    if (TRANS_B) { bv = load_b(p.b_off + (n0 + nn) * p.k + k0 + kb); }
                    else { bv = load_b(p.b_off + (k0 + kb) * p.n + n0 + nn); }
                }
                b_t[kb * LD4 + nn / 4u][nn % 4u] = bv;
            }
        }
        if (B_PAIRS) {
            for (var r = 0u; r < 2u; r++) {
                let e = 2u * (tid + 256u * r);
                if (TRANS_B) {
                    let nn = e / KS; let kb = e % KS;
                    var v = vec2<f32>(0.0);
                    if (n0 + nn < p.n && k0 + kb < k_hi) {
                        v = unpack2x16float(b[(p.b_off + (n0 + nn) * p.k + k0 + kb) >> 1u]);
                        if (k0 + kb + 1u >= k_hi) { v.y = 0.0; }
                    }
                    b_t[kb * LD4 + nn / 4u][nn % 4u] = v.x;
                    b_t[(kb + 1u) * LD4 + nn / 4u][nn % 4u] = v.y;
                } else {
                    let nn = e % TS; let kb = e / TS;
                    var v = vec2<f32>(0.0);
                    if (n0 + nn < p.n && k0 + kb < k_hi) {
                        v = unpack2x16float(b[(p.b_off + (k0 + kb) * p.n + n0 + nn) >> 1u]);
                        if (n0 + nn + 1u >= p.n) { v.y = 0.0; }
                    }
                    b_t[kb * LD4 + nn / 4u][nn % 4u] = v.x;
                    b_t[kb * LD4 + nn / 4u][nn % 4u + 1u] = v.y;
                }
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < KS; k++) {
            let av = a_t[k * LD4 + lid.y];
            let bv = b_t[k * LD4 + lid.x];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + lid.y * 4u + i;
        if (m >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + lid.x * 4u + j;
            if (n >= p.n) { continue; }
            if (SPLIT) {
                c[wid.z * p.m * p.n + m * p.n + n] = accs[i][j];
            } else {
                var v = accs[i][j] * p.alpha;
                if (ACC) { v = c[m * p.n + n] + v; }
                c[m * p.n + n] = v;
            }
        }
    }
}

// ---------------------------------------------------------------- 128 x 128 tiles
const T8: u32 = 128u;
const LD8: u32 = 33u;                          // vec4 per k row of a 128-wide tile (+1 pad)
var<workgroup> a8: array<vec4<f32>, 528>;     // 16 * LD8: [k][m/4]
var<workgroup> b8: array<vec4<f32>, 528>;     // 16 * LD8: [k][n/4]

fn store8(z: u32, m: u32, n0: u32, v: vec4<f32>) {
    if (m >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + j;
        if (n >= p.n) { continue; }
        if (SPLIT) {
            c[z * p.m * p.n + m * p.n + n] = v[j];
        } else {
            var x = v[j] * p.alpha;
            if (ACC) { x = c[m * p.n + n] + x; }
            c[m * p.n + n] = x;
        }
    }
}

@compute @workgroup_size(16, 16)
fn main8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * T8;
    let m0 = wid.y * T8;
    // acc{h}{i}{g}: m group h (rows lid.y*4 + i + 64*h), n group g (cols lid.x*4 + 64*g)
    var a00 = vec4<f32>(0.0); var a01 = vec4<f32>(0.0); var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a30 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0);
    var b00 = vec4<f32>(0.0); var b01 = vec4<f32>(0.0); var b10 = vec4<f32>(0.0); var b11 = vec4<f32>(0.0);
    var b20 = vec4<f32>(0.0); var b21 = vec4<f32>(0.0); var b30 = vec4<f32>(0.0); var b31 = vec4<f32>(0.0);
    let k_lo = wid.z * p.kchunk;
    let k_hi = min(p.k, k_lo + p.kchunk);
    let nsteps = (k_hi - min(k_lo, k_hi) + KS8 - 1u) / KS8;
    for (var step = 0u; step < nsteps; step++) {
        let k0 = k_lo + step * KS8;
        for (var r = 0u; r < KS8 / 2u; r++) {
            let e = tid + 256u * r;
            // a tile: 128 (m) x KS8 (k); consecutive invocations walk a's contiguous axis
            var mm: u32; var kk: u32;
            if (TRANS_A) { mm = e % T8; kk = e / T8; } else { mm = e / KS8; kk = e % KS8; }
            var av = 0.0;
            if (m0 + mm < p.m && k0 + kk < k_hi) {
                if (TRANS_A) { av = a[(k0 + kk) * p.m + m0 + mm]; }
                else { av = a[(m0 + mm) * p.k + k0 + kk]; }
            }
            a8[kk * LD8 + mm / 4u][mm % 4u] = av;
            // b tile: 8 (k) x 128 (n)
            if (!B_PAIRS) {
                var nn: u32; var kb: u32;
                if (TRANS_B) { nn = e / KS8; kb = e % KS8; } else { nn = e % T8; kb = e / T8; }
                var bv = 0.0;
                if (n0 + nn < p.n && k0 + kb < k_hi) {
                    if (TRANS_B) { bv = load_b(p.b_off + (n0 + nn) * p.k + k0 + kb); }
                    else { bv = load_b(p.b_off + (k0 + kb) * p.n + n0 + nn); }
                }
                b8[kb * LD8 + nn / 4u][nn % 4u] = bv;
            }
        }
        if (B_PAIRS) {
            for (var r = 0u; r < KS8 / 4u; r++) {
                let e = 2u * (tid + 256u * r);
                if (TRANS_B) {
                    let nn = e / KS8; let kb = e % KS8;
                    var v = vec2<f32>(0.0);
                    if (n0 + nn < p.n && k0 + kb < k_hi) {
                        v = unpack2x16float(b[(p.b_off + (n0 + nn) * p.k + k0 + kb) >> 1u]);
                        if (k0 + kb + 1u >= k_hi) { v.y = 0.0; }
                    }
                    b8[kb * LD8 + nn / 4u][nn % 4u] = v.x;
                    b8[(kb + 1u) * LD8 + nn / 4u][nn % 4u] = v.y;
                } else {
                    let nn = e % T8; let kb = e / T8;
                    var v = vec2<f32>(0.0);
                    if (n0 + nn < p.n && k0 + kb < k_hi) {
                        v = unpack2x16float(b[(p.b_off + (k0 + kb) * p.n + n0 + nn) >> 1u]);
                        if (n0 + nn + 1u >= p.n) { v.y = 0.0; }
                    }
                    b8[kb * LD8 + nn / 4u][nn % 4u] = v.x;
                    b8[kb * LD8 + nn / 4u][nn % 4u + 1u] = v.y;
                }
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < KS8; k++) {
            let x0 = a8[k * LD8 + lid.y];
            let x1 = a8[k * LD8 + 16u + lid.y];
            let y0 = b8[k * LD8 + lid.x];
            let y1 = b8[k * LD8 + 16u + lid.x];
            a00 += x0.x * y0; a01 += x0.x * y1;
            a10 += x0.y * y0; a11 += x0.y * y1;
            a20 += x0.z * y0; a21 += x0.z * y1;
            a30 += x0.w * y0; a31 += x0.w * y1;
            b00 += x1.x * y0; b01 += x1.x * y1;
            b10 += x1.y * y0; b11 += x1.y * y1;
            b20 += x1.z * y0; b21 += x1.z * y1;
            b30 += x1.w * y0; b31 += x1.w * y1;
        }
        workgroupBarrier();
    }
    let z = wid.z;
    let ma = m0 + lid.y * 4u;
    let mb = ma + 64u;
    let na = n0 + lid.x * 4u;
    let nb = na + 64u;
    store8(z, ma, na, a00); store8(z, ma, nb, a01);
    store8(z, ma + 1u, na, a10); store8(z, ma + 1u, nb, a11);
    store8(z, ma + 2u, na, a20); store8(z, ma + 2u, nb, a21);
    store8(z, ma + 3u, na, a30); store8(z, ma + 3u, nb, a31);
    store8(z, mb, na, b00); store8(z, mb, nb, b01);
    store8(z, mb + 1u, na, b10); store8(z, mb + 1u, nb, b11);
    store8(z, mb + 2u, na, b20); store8(z, mb + 2u, nb, b21);
    store8(z, mb + 3u, na, b30); store8(z, mb + 3u, nb, b31);
}

// ---------------------------------------------------------------- f16 rows to f32
// Entry `widen`: float16 elements off .. off + total of `w_src` (raw u32 words, as b above) to
// float32 (exact). Reference: reference.py `widen_f16`. The lm_head widens each vocab chunk of
// an f16 table once for its two matmuls where the logits run on main8 (on an H200 main8 ran
// the 2B-4T logits chunk in 4.20 ms from f32 rows, 5.17 from f16 ones; main's gradient rows
// 5.77 vs 6.39).
struct WParams { total: u32, off: u32 }

@group(0) @binding(0) var<storage, read> w_src: array<u32>;
@group(0) @binding(1) var<storage, read_write> w_dst: array<f32>;
@group(0) @binding(2) var<uniform> wp: WParams;

@compute @workgroup_size(256)
fn widen(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= wp.total) { return; }
    let j = wp.off + i;
    w_dst[i] = unpack2x16float(w_src[j >> 1u])[j & 1u];
}

// ---------------------------------------------------------------- split-K reduction
struct RParams { total: u32, splits: u32, alpha: f32 }

@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> r_c: array<f32>;
@group(0) @binding(2) var<uniform> rp: RParams;

@compute @workgroup_size(256)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= rp.total) { return; }
    var s = 0.0;
    for (var z = 0u; z < rp.splits; z++) { s += part[z * rp.total + i]; }
    var v = s * rp.alpha;
    if (ACC) { v = r_c[i] + v; }
    r_c[i] = v;
}
