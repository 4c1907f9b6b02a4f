// Straight-through input gradient of BitLinear on the int8 dot product (dot4I8Packed, dp4a),
// like the forward W1.58A8 GEMM. Reference: reference.py `bitlinear_backward_int`; the fp32
// reference path is bitlinear_backward.wgsl (same tiles, same dispatch shapes).
//
// dx = dy @ codes / weight_scale with dy quantized per row to integers at a power-of-two scale
// (row-wise dy quantization for the input gradient: SwitchBack, Wortsman et al. 2023,
// arXiv:2304.13013). The products with codes in {-1, 0, +1} and their int32 sums are exact, so
// the only rounding is dy's, fixed by TERMS:
//   TERMS = 1 ("i8"):  TOP = 7,  q in [-127, 127]       one dot4I8Packed per 4 products
//   TERMS = 2 ("i16"): TOP = 14, q in [-16383, 16383]   q = 256 hi + lo, hi in [-64, 64],
//                      lo in [-128, 127]: two dot4I8Packed, sums joined as 256 S_hi + S_lo
// 1. Entry `rows`, one workgroup per dy row n: e_n = clamp(TOP + 126 - E_n, -126, 126) with E_n
//    the biased f32 exponent of max|dy_n|, so max|dy_n| * 2^e_n lies in [2^(TOP-1), 2^TOP)
//    (scaling by a power of two is exact); q = clamp(round(dy * 2^e_n), -(2^TOP - 1),
//    2^TOP - 1) (round: ties to even); writes hi (and lo) as i8x4 words, 4 o per u32 (o = 4j + b
//    in byte b), rows of OP4 = ceil(OUT / 4) words zero padded, and rs (N,) f32 = 2^-e_n.
//    Error per element <= 2^-TOP max|dy_n| (half a unit, units of 2^-e_n <= 2^(1-TOP) max).
//    Non-finite dy gives undefined (finite) dx: the caller's loss check is what catches it.
// 2. Entries `main` (64 x 64 outputs) and `main8` (128 x 128): OUT in steps of 4 * OW o; the
//    codes tile is built transposed in workgroup memory (4 consecutive o of one k per i8x4
//    word), so the inner loop is the forward's: one vec4 of dy words and one of codes per 16
//    dot4I8Packed. dx = f32(S) * rs[n] / weight_scale (+ dx if ACC); with INT_OUT the exact
//    int32 S is stored instead (bit pattern in dx; for tests). |S| <= 16383 * OUT < 2^31 for
//    OUT < 131,000.
override TERMS: u32 = 2u;
override ACC: bool = false;
override INT_OUT: bool = false;
// Split over OUT (few output tiles, e.g. 512 token rows): workgroup z sums the o steps
// [z * spz, (z + 1) * spz) into int32 slab z of dx (splits, N, K); entry `reduce` adds the slabs
// (integers: exact in any order, so the same bits as unsplit) and applies the scale (+ ACC).
override SPLIT: bool = false;

// ---------------------------------------------------------------- rows: exponent and int8 terms
struct RParams { n: u32, out: u32, op4: u32, top: i32 }

@group(0) @binding(0) var<storage, read> r_dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> r_hi: array<u32>;
@group(0) @binding(2) var<storage, read_write> r_lo: array<u32>;
@group(0) @binding(3) var<storage, read_write> r_rs: array<f32>;
@group(0) @binding(4) var<uniform> rp: RParams;

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
    let eb = i32((bitcast<u32>(red[0]) >> 23u) & 0xffu);
    let e = clamp(rp.top + 126 - eb, -126, 126);
    let up = bitcast<f32>(u32(127 + e) << 23u);
    if (tid == 0u) { r_rs[row] = bitcast<f32>(u32(127 - e) << 23u); }
    let qmax = f32((1 << u32(rp.top)) - 1);
    for (var j = tid; j < rp.op4; j += 256u) {
        var hw = 0u;
        var lw = 0u;
        for (var b = 0u; b < 4u; b++) {
            let o = 4u * j + b;
            var q = 0;
            if (o < rp.out) { q = i32(clamp(round(r_dy[base + o] * up), -qmax, qmax)); }
            var h = q;
            if (TERMS == 2u) {
                h = (q + 128) >> 8u;                      // floor((q + 128) / 256): arithmetic shift
                lw |= (u32(q - h * 256) & 0xffu) << (8u * b);
            }
            hw |= (u32(h) & 0xffu) << (8u * b);
        }
        r_hi[row * rp.op4 + j] = hw;
        if (TERMS == 2u) { r_lo[row * rp.op4 + j] = lw; }
    }
}

// ---------------------------------------------------------------- main / main8: dx
struct Params { n: u32, out: u32, op4: u32, k: u32, k16: u32, weight_scale: f32, wrow0: u32,
                spz: u32 }

@group(0) @binding(0) var<storage, read> qhi: array<u32>;    // (N, OP4) i8x4
@group(0) @binding(1) var<storage, read> qlo: array<u32>;    // (N, OP4) i8x4 (TERMS = 2)
@group(0) @binding(2) var<storage, read> rs: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read_write> dx: array<u32>;
@group(0) @binding(5) var<uniform> p: Params;

// Field f (0..15) of four weight words (rows o..o+3, code + 1 per field) -> the four codes as
// one i8x4 word, o + b in byte b (decode4 of bitlinear.wgsl on gathered fields).
fn gather4(w0: u32, w1: u32, w2: u32, w3: u32, f: u32) -> u32 {
    let sh = 2u * f;
    let s = ((w0 >> sh) & 3u) | (((w1 >> sh) & 3u) << 8u) | (((w2 >> sh) & 3u) << 16u)
            | (((w3 >> sh) & 3u) << 24u);
    let plus = (s >> 1u) & 0x01010101u;                  // field 2 -> +1
    let minus = (~(s | (s >> 1u))) & 0x01010101u;        // field 0 -> -1 (0xff)
    return plus | (minus * 0xffu);
}

fn wword(o: u32, word: u32) -> u32 {
    if (o < p.out && word < p.k16) { return w[(p.wrow0 + o) * p.k16 + word]; }
    return 0x55555555u;                                    // all fields 1: zero weights
}

// Four i8x4 code words (k = 16 * word + 4 * fq + 0..3) for o-word ow of the tile.
fn codes_vec(o: u32, word: u32, fq: u32) -> vec4<u32> {
    let w0 = wword(o, word);
    let w1 = wword(o + 1u, word);
    let w2 = wword(o + 2u, word);
    let w3 = wword(o + 3u, word);
    let f = 4u * fq;
    return vec4<u32>(gather4(w0, w1, w2, w3, f), gather4(w0, w1, w2, w3, f + 1u),
                     gather4(w0, w1, w2, w3, f + 2u), gather4(w0, w1, w2, w3, f + 3u));
}

fn store(n: u32, k0: u32, v: vec4<i32>, z: u32) {
    if (n >= p.n) { return; }
    let r = rs[n];
    for (var j = 0u; j < 4u; j++) {
        let k = k0 + j;
        if (k >= p.k) { continue; }
        if (SPLIT) {
            dx[(z * p.n + n) * p.k + k] = bitcast<u32>(v[j]);
        } else if (INT_OUT) {
            dx[n * p.k + k] = bitcast<u32>(v[j]);
        } else {
            var x = f32(v[j]) * r / p.weight_scale;
            if (ACC) { x = bitcast<f32>(dx[n * p.k + k]) + x; }
            dx[n * p.k + k] = bitcast<u32>(x);
        }
    }
}

fn join(h: vec4<i32>, l: vec4<i32>) -> vec4<i32> {
    if (TERMS == 2u) { return h * 256 + l; }
    return h;
}

fn dot4(a: u32, b: vec4<u32>) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(a, b.x), dot4I8Packed(a, b.y),
                     dot4I8Packed(a, b.z), dot4I8Packed(a, b.w));
}

// 64 x 64 tile: 16 x 16 invocations, each 4 n x 4 k; OW = 16 o-words (64 o) per step.
const TS: u32 = 64u;
const OW: u32 = 16u;
const LD4: u32 = 17u;                          // vec4 stride per o-word (16 + 1 pad)
var<workgroup> h_t: array<vec4<u32>, 272>;    // dy hi words [o-word][n/4]
var<workgroup> l_t: array<vec4<u32>, 272>;    // dy lo words [o-word][n/4]
var<workgroup> c_t: array<vec4<u32>, 272>;    // codes [o-word][k/4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let k0 = wid.x * TS;
    let n0 = wid.y * TS;
    var h0 = vec4<i32>(0); var h1 = vec4<i32>(0); var h2 = vec4<i32>(0); var h3 = vec4<i32>(0);
    var l0 = vec4<i32>(0); var l1 = vec4<i32>(0); var l2 = vec4<i32>(0); var l3 = vec4<i32>(0);
    let nsteps = (p.op4 + OW - 1u) / OW;
    let s_hi = min(nsteps, (wid.z + 1u) * p.spz);        // this slab's o steps (all unsplit)
    for (var step = wid.z * p.spz; step < s_hi; step++) {
        let ow0 = step * OW;
        for (var r = 0u; r < 4u; r++) {                 // 64 rows x 16 words
            let e = tid + 256u * r;
            let nn = e / OW;
            let ww = e % OW;
            var vh = 0u;
            var vl = 0u;
            if (n0 + nn < p.n && ow0 + ww < p.op4) {
                vh = qhi[(n0 + nn) * p.op4 + ow0 + ww];
                if (TERMS == 2u) { vl = qlo[(n0 + nn) * p.op4 + ow0 + ww]; }
            }
            h_t[ww * LD4 + nn / 4u][nn % 4u] = vh;
            if (TERMS == 2u) { l_t[ww * LD4 + nn / 4u][nn % 4u] = vl; }
        }
        {                                                // 16 o-words x 64 k: one vec4 each
            let ow = tid / 16u;
            let kq = (tid / 4u) % 4u;
            let fq = tid % 4u;
            c_t[ow * LD4 + 4u * kq + fq] = codes_vec(4u * (ow0 + ow), k0 / 16u + kq, fq);
        }
        workgroupBarrier();
        for (var k = 0u; k < OW; k++) {
            let av = h_t[k * LD4 + lid.y];
            let bv = c_t[k * LD4 + lid.x];
            h0 += dot4(av.x, bv); h1 += dot4(av.y, bv); h2 += dot4(av.z, bv); h3 += dot4(av.w, bv);
            if (TERMS == 2u) {
                let lv = l_t[k * LD4 + lid.y];
                l0 += dot4(lv.x, bv); l1 += dot4(lv.y, bv); l2 += dot4(lv.z, bv); l3 += dot4(lv.w, bv);
            }
        }
        workgroupBarrier();
    }
    let na = n0 + lid.y * 4u;
    let ka = k0 + lid.x * 4u;
    store(na, ka, join(h0, l0), wid.z);
    store(na + 1u, ka, join(h1, l1), wid.z);
    store(na + 2u, ka, join(h2, l2), wid.z);
    store(na + 3u, ka, join(h3, l3), wid.z);
}

// 128 x 128 tile: 16 x 16 invocations, each 8 n x 8 k in two groups of 4 at offsets 0 and 64
// (as main8 of bitlinear.wgsl); OW8 = 8 o-words (32 o) per step, rows padded to 33 vec4.
const T8: u32 = 128u;
const OW8: u32 = 8u;
const LD8: u32 = 33u;
var<workgroup> h8: array<vec4<u32>, 264>;     // dy hi words [o-word][n/4], OW8 x LD8
var<workgroup> l8: array<vec4<u32>, 264>;     // dy lo words
var<workgroup> c8: array<vec4<u32>, 264>;     // codes [o-word][k/4]

@compute @workgroup_size(16, 16)
fn main8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let k0 = wid.x * T8;
    let n0 = wid.y * T8;
    // {a,b}{i}{g}: n group i (rows lid.y*4 + i, + 64 for b), k group g (cols lid.x*4 + 64*g);
    // c: hi sums, d: lo sums
    var ca00 = vec4<i32>(0); var ca01 = vec4<i32>(0); var ca10 = vec4<i32>(0); var ca11 = vec4<i32>(0);
    var ca20 = vec4<i32>(0); var ca21 = vec4<i32>(0); var ca30 = vec4<i32>(0); var ca31 = vec4<i32>(0);
    var cb00 = vec4<i32>(0); var cb01 = vec4<i32>(0); var cb10 = vec4<i32>(0); var cb11 = vec4<i32>(0);
    var cb20 = vec4<i32>(0); var cb21 = vec4<i32>(0); var cb30 = vec4<i32>(0); var cb31 = vec4<i32>(0);
    var da00 = vec4<i32>(0); var da01 = vec4<i32>(0); var da10 = vec4<i32>(0); var da11 = vec4<i32>(0);
    var da20 = vec4<i32>(0); var da21 = vec4<i32>(0); var da30 = vec4<i32>(0); var da31 = vec4<i32>(0);
    var db00 = vec4<i32>(0); var db01 = vec4<i32>(0); var db10 = vec4<i32>(0); var db11 = vec4<i32>(0);
    var db20 = vec4<i32>(0); var db21 = vec4<i32>(0); var db30 = vec4<i32>(0); var db31 = vec4<i32>(0);
    let nsteps = (p.op4 + OW8 - 1u) / OW8;
    let s_hi = min(nsteps, (wid.z + 1u) * p.spz);
    for (var step = wid.z * p.spz; step < s_hi; step++) {
        let ow0 = step * OW8;
        for (var r = 0u; r < 4u; r++) {                 // 128 rows x 8 words
            let e = tid + 256u * r;
            let nn = e / OW8;
            let ww = e % OW8;
            var vh = 0u;
            var vl = 0u;
            if (n0 + nn < p.n && ow0 + ww < p.op4) {
                vh = qhi[(n0 + nn) * p.op4 + ow0 + ww];
                if (TERMS == 2u) { vl = qlo[(n0 + nn) * p.op4 + ow0 + ww]; }
            }
            h8[ww * LD8 + nn / 4u][nn % 4u] = vh;
            if (TERMS == 2u) { l8[ww * LD8 + nn / 4u][nn % 4u] = vl; }
        }
        {                                                // 8 o-words x 128 k: one vec4 each
            let ow = tid / 32u;
            let kq = (tid / 4u) % 8u;
            let fq = tid % 4u;
            c8[ow * LD8 + 4u * kq + fq] = codes_vec(4u * (ow0 + ow), k0 / 16u + kq, fq);
        }
        workgroupBarrier();
        for (var k = 0u; k < OW8; k++) {
            let a0 = h8[k * LD8 + lid.y];
            let a1 = h8[k * LD8 + 16u + lid.y];
            let b0 = c8[k * LD8 + lid.x];
            let b1 = c8[k * LD8 + 16u + lid.x];
            ca00 += dot4(a0.x, b0); ca01 += dot4(a0.x, b1); ca10 += dot4(a0.y, b0); ca11 += dot4(a0.y, b1);
            ca20 += dot4(a0.z, b0); ca21 += dot4(a0.z, b1); ca30 += dot4(a0.w, b0); ca31 += dot4(a0.w, b1);
            cb00 += dot4(a1.x, b0); cb01 += dot4(a1.x, b1); cb10 += dot4(a1.y, b0); cb11 += dot4(a1.y, b1);
            cb20 += dot4(a1.z, b0); cb21 += dot4(a1.z, b1); cb30 += dot4(a1.w, b0); cb31 += dot4(a1.w, b1);
            if (TERMS == 2u) {
                let e0 = l8[k * LD8 + lid.y];
                let e1 = l8[k * LD8 + 16u + lid.y];
                da00 += dot4(e0.x, b0); da01 += dot4(e0.x, b1); da10 += dot4(e0.y, b0); da11 += dot4(e0.y, b1);
                da20 += dot4(e0.z, b0); da21 += dot4(e0.z, b1); da30 += dot4(e0.w, b0); da31 += dot4(e0.w, b1);
                db00 += dot4(e1.x, b0); db01 += dot4(e1.x, b1); db10 += dot4(e1.y, b0); db11 += dot4(e1.y, b1);
                db20 += dot4(e1.z, b0); db21 += dot4(e1.z, b1); db30 += dot4(e1.w, b0); db31 += dot4(e1.w, b1);
            }
        }
        workgroupBarrier();
    }
    let na = n0 + lid.y * 4u;
    let nb = na + 64u;
    let ka = k0 + lid.x * 4u;
    let kb = ka + 64u;
    store(na, ka, join(ca00, da00), wid.z); store(na, kb, join(ca01, da01), wid.z);
    store(na + 1u, ka, join(ca10, da10), wid.z); store(na + 1u, kb, join(ca11, da11), wid.z);
    store(na + 2u, ka, join(ca20, da20), wid.z); store(na + 2u, kb, join(ca21, da21), wid.z);
    store(na + 3u, ka, join(ca30, da30), wid.z); store(na + 3u, kb, join(ca31, da31), wid.z);
    store(nb, ka, join(cb00, db00), wid.z); store(nb, kb, join(cb01, db01), wid.z);
    store(nb + 1u, ka, join(cb10, db10), wid.z); store(nb + 1u, kb, join(cb11, db11), wid.z);
    store(nb + 2u, ka, join(cb20, db20), wid.z); store(nb + 2u, kb, join(cb21, db21), wid.z);
    store(nb + 3u, ka, join(cb30, db30), wid.z); store(nb + 3u, kb, join(cb31, db31), wid.z);
}

// ---------------------------------------------------------------- split slabs -> dx
struct SParams { n: u32, k: u32, splits: u32, weight_scale: f32 }

@group(0) @binding(0) var<storage, read> s_part: array<i32>;
@group(0) @binding(1) var<storage, read> s_rs: array<f32>;
@group(0) @binding(2) var<storage, read_write> s_dx: array<u32>;
@group(0) @binding(3) var<uniform> sp: SParams;

@compute @workgroup_size(256)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let total = sp.n * sp.k;
    if (i >= total) { return; }
    var acc = 0;
    for (var z = 0u; z < sp.splits; z++) { acc += s_part[z * total + i]; }
    if (INT_OUT) {
        s_dx[i] = bitcast<u32>(acc);
    } else {
        var x = f32(acc) * s_rs[i / sp.k] / sp.weight_scale;     // store()'s expression
        if (ACC) { x = bitcast<f32>(s_dx[i]) + x; }
        s_dx[i] = bitcast<u32>(x);
    }
}
