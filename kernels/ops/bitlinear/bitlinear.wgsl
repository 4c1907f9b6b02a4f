// W1.58A8 BitLinear forward (BitNet b1.58; Microsoft BitNet/gpu W2A8 kernel idea).
// Reference: reference.py `bitlinear` (and `bitlinear_int` for the INT_OUT variant).
//   xq   int8 (N, K) packed 4 per u32, row stride K4 = ceil(K/4) words (quantize_act's layout)
//   xs   f32 (N,) per-token activation scale
//   w    ternary codes (OUT, K), 2 bits each, 16 per u32, row stride K16 = ceil(K/16) words;
//        field i of word j is element 16j+i, stored as code+1 (0 -> -1, 1 -> 0, 2 -> +1),
//        padding fields are 1 (zero weight)
//   y    f32 (N, OUT) = acc / (xs[n] * weight_scale), acc = exact int32 xq @ codes^T via
//        dot4I8Packed; with INT_OUT the raw int32 acc is stored instead (bit pattern in y).
//        y is bound as u32 words and written with bitcast, so int32 bit patterns never pass
//        through a float register/store.
// Tiling: 16 x TM/4 invocations, TM x 64 outputs per workgroup (TM = 64, or 32 for shapes with
// few 64x64 tiles: k/v at N = 512 gets 160 workgroups instead of 80 for 132 SMs), K in steps of
// 4*KW elements (KW = 16 or 32 activation words, KW/4 weight words decoded to i8x4 into
// workgroup memory). Each invocation owns 4 consecutive rows x 4 consecutive columns; tiles are
// stored [k word][row/4] as vec4<u32>, so the inner loop reads one vec4 of activations and one
// of weights per 16 dot4I8Packed.
// The small tile halves rows rather than columns: a K step loads TM*KW activation words +
// 64*KW/4 weight words, so 32x64 moves 48*KW words per 2048 outputs where 64x32 would move
// 72*KW (a weight word holds 16 elements, an activation word 4); the b-tile code stays as is.
// The invocation count scales with TM, so the a-tile loop is KW/4 passes at either size and the
// b-tile loop 16*KW/(4*TM) (TM = 32: twice the weight words, and decodes, per invocation).
// Split-K (SPLIT; for shapes with few 64x64 tiles, e.g. k/v projections): workgroup z sums
// the K steps [z*spz, (z+1)*spz) (spz = steps per slab, so slab edges are multiples of 4*KW
// elements and only the last step of K needs masking) into int32 slab z of y (splits, N, OUT);
// entry `reduce` adds the slabs in order z = 0.. (integers: exact, order-free) and applies the
// same scale expression as the unsplit store, so results are bit-identical to SPLIT = false.
// Weight rows start at row wrow0 of w (projections of one layer can share one packed buffer).
// Entry `main3`: one GEMM for 2-3 projections that read the same activations (q/k/v, or
// gate/up): w rows wrow0.. hold their codes back to back, columns [0, o1) go to y with
// weight_scale, [o1, o2) to y1 with s1, [o2, out) to y2 with s2, each (N, its width) and with
// the same int32 sums and f32 expression as separate launches (bit-identical), in one dispatch
// with more tiles (2B-4T q/k/v: 400 instead of 320 + 80 + 80).
override INT_OUT: bool = false;
override SPLIT: bool = false;

struct Params { n: u32, out: u32, k4: u32, k16: u32, weight_scale: f32, spz: u32, wrow0: u32,
                o1: u32, o2: u32, s1: f32, s2: f32 }     // o1.. s2: main3 only

@group(0) @binding(0) var<storage, read> xq: array<u32>;
@group(0) @binding(1) var<storage, read> xs: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;
// main3's own bindings after the shared 0-3 (another entry point's bindings may reuse numbers;
// the host binds params last)
@group(0) @binding(4) var<storage, read_write> y1: array<u32>;
@group(0) @binding(5) var<storage, read_write> y2: array<u32>;
@group(0) @binding(6) var<uniform> p3: Params;

const TN: u32 = 64u;      // output columns per tile
// output rows per tile: 64 or 32 (16 x TM/4 invocations); the host's grid.y must use the same.
override TM: u32 = 64u;
// activation words per K step: 16 (64 int8) or 32 (128 int8: half the barriers per K, twice
// the workgroup memory). The host's K-step / slab arithmetic must use the same value.
override KW: u32 = 16u;
// tile strides in vec4 per k word (+1 pad: fewer bank conflicts)
const LDB: u32 = 17u;                 // 64 columns / 4 + 1
override LDA: u32 = TM / 4u + 1u;     // TM rows / 4 + 1
var<workgroup> a_t: array<vec4<u32>, KW * LDA>;   // activations [word][row/4]
var<workgroup> b_t: array<vec4<u32>, KW * LDB>;   // decoded weights [word][col/4]

// 8 bits of a packed weight word (4 fields, code+1 each) -> 4 signed bytes (i8x4).
fn decode4(x: u32) -> u32 {
    let s = (x & 3u) | ((x & 0xcu) << 6u) | ((x & 0x30u) << 12u) | ((x & 0xc0u) << 18u);
    let plus = (s >> 1u) & 0x01010101u;                  // field 2 -> +1
    let minus = (~(s | (s >> 1u))) & 0x01010101u;        // field 0 -> -1 (0xff)
    return plus | (minus * 0xffu);
}

// The int32 sums of this invocation's 4 x 4 outputs over its slab's K steps. The parameters come
// by value (q) because main and main3 read them from different uniform bindings.
fn tile(wid: vec3<u32>, lid: vec3<u32>, tid: u32, q: Params) -> array<vec4<i32>, 4> {
    let col0 = wid.x * TN;
    let row0 = wid.y * TM;
    let nt = 4u * TM;                // invocations
    var acc0 = vec4<i32>(0);         // vec4 accumulators: registers, not an indexed array
    var acc1 = vec4<i32>(0);
    var acc2 = vec4<i32>(0);
    var acc3 = vec4<i32>(0);
    let nsteps = (q.k4 + KW - 1u) / KW;
    let s_lo = wid.z * q.spz;                 // this slab's K steps (all of K when not SPLIT)
    let s_hi = min(nsteps, s_lo + q.spz);
    for (var step = s_lo; step < s_hi; step++) {
        let kw0 = step * KW;
        for (var r = 0u; r < KW / 4u; r++) {           // TM rows x KW words = (KW/4) * nt
            let e = tid + nt * r;
            let rr = e / KW;
            let ww = e % KW;
            let row = row0 + rr;
            var v = 0u;
            if (row < q.n && kw0 + ww < q.k4) { v = xq[row * q.k4 + kw0 + ww]; }
            a_t[ww * LDA + rr / 4u][rr % 4u] = v;
        }
        for (var r = 0u; r < 16u * KW / nt; r++) {     // 64 cols x KW/4 weight words
            let e = tid + nt * r;
            let cc = e / (KW / 4u);
            let qw = e % (KW / 4u);
            let col = col0 + cc;
            let word = step * (KW / 4u) + qw;
            var pw = 0x55555555u;                        // all fields 1: zero weights
            if (col < q.out && word < q.k16) { pw = w[(q.wrow0 + col) * q.k16 + word]; }
            for (var b = 0u; b < 4u; b++) {
                b_t[(qw * 4u + b) * LDB + cc / 4u][cc % 4u] = decode4((pw >> (8u * b)) & 0xffu);
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < KW; k++) {
            let av = a_t[k * LDA + lid.y];
            let bv = b_t[k * LDB + lid.x];
            let a0 = av.x; let a1 = av.y; let a2 = av.z; let a3 = av.w;
            let b0 = bv.x; let b1 = bv.y; let b2 = bv.z; let b3 = bv.w;
            acc0 += vec4<i32>(dot4I8Packed(a0, b0), dot4I8Packed(a0, b1), dot4I8Packed(a0, b2), dot4I8Packed(a0, b3));
            acc1 += vec4<i32>(dot4I8Packed(a1, b0), dot4I8Packed(a1, b1), dot4I8Packed(a1, b2), dot4I8Packed(a1, b3));
            acc2 += vec4<i32>(dot4I8Packed(a2, b0), dot4I8Packed(a2, b1), dot4I8Packed(a2, b2), dot4I8Packed(a2, b3));
            acc3 += vec4<i32>(dot4I8Packed(a3, b0), dot4I8Packed(a3, b1), dot4I8Packed(a3, b2), dot4I8Packed(a3, b3));
        }
        workgroupBarrier();
    }
    return array<vec4<i32>, 4>(acc0, acc1, acc2, acc3);
}

@compute @workgroup_size(16, TM / 4u)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let accs = tile(wid, lid, tid, p);
    let col0 = wid.x * TN;
    let row0 = wid.y * TM;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        if (row >= p.n) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col >= p.out) { continue; }
            if (SPLIT) {
                y[(wid.z * p.n + row) * p.out + col] = bitcast<u32>(accs[i][j]);
            } else if (INT_OUT) {
                y[row * p.out + col] = bitcast<u32>(accs[i][j]);
            } else {
                y[row * p.out + col] = bitcast<u32>(f32(accs[i][j]) / (xs[row] * p.weight_scale));
            }
        }
    }
}

@compute @workgroup_size(16, TM / 4u)
fn main3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let accs = tile(wid, lid, tid, p3);
    let col0 = wid.x * TN;
    let row0 = wid.y * TM;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        if (row >= p3.n) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col >= p3.out) { continue; }
            let a = f32(accs[i][j]);
            if (col < p3.o1) {
                y[row * p3.o1 + col] = bitcast<u32>(a / (xs[row] * p3.weight_scale));
            } else if (col < p3.o2) {
                y1[row * (p3.o2 - p3.o1) + col - p3.o1] = bitcast<u32>(a / (xs[row] * p3.s1));
            } else {
                y2[row * (p3.out - p3.o2) + col - p3.o2] = bitcast<u32>(a / (xs[row] * p3.s2));
            }
        }
    }
}

// ---------------------------------------------------------------- 128 x 128 tiles
// Entries main8 / main3_8 (large N and OUT, where 128 x 128 tiles still fill the GPU; unsplit): 16 x 16 invocations, each 8 rows x 8 columns in two groups of 4 at
// offsets 0 and 64 (neighbouring invocations read neighbouring vec4), so the inner loop reads
// four vec4 per 64 dot4I8Packed (main: two per 16). The int32 sums are exact, so outputs are
// bit-identical to main / main3. K in steps of 32 int8 (8 words) with rows padded to 33 vec4
// (2 x 8 x 33 x 16 = 8448 bytes): the activation tile's scalar stores hit distinct banks
// (unpadded 32-vec4 rows put 16 stores of a warp on one bank).
const T8: u32 = 128u;
const KW8: u32 = 8u;
const LD8: u32 = 33u;
var<workgroup> a8: array<vec4<u32>, 264>;   // activations [word][row/4], KW8 x LD8
var<workgroup> b8: array<vec4<u32>, 264>;   // decoded weights [word][col/4]

fn dot4x4(a: vec4<u32>, b: vec4<u32>, i: u32) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(a[i], b.x), dot4I8Packed(a[i], b.y),
                     dot4I8Packed(a[i], b.z), dot4I8Packed(a[i], b.w));
}

// acc index 8 * h + 2 * i + g: rows lid.y*4 + i + 64*h, columns lid.x*4 + 64*g
fn tile8(wid: vec3<u32>, lid: vec3<u32>, tid: u32, q: Params) -> array<vec4<i32>, 16> {
    let col0 = wid.x * T8;
    let row0 = wid.y * T8;
    var c00 = vec4<i32>(0); var c01 = vec4<i32>(0); var c10 = vec4<i32>(0); var c11 = vec4<i32>(0);
    var c20 = vec4<i32>(0); var c21 = vec4<i32>(0); var c30 = vec4<i32>(0); var c31 = vec4<i32>(0);
    var d00 = vec4<i32>(0); var d01 = vec4<i32>(0); var d10 = vec4<i32>(0); var d11 = vec4<i32>(0);
    var d20 = vec4<i32>(0); var d21 = vec4<i32>(0); var d30 = vec4<i32>(0); var d31 = vec4<i32>(0);
    let nsteps = (q.k4 + KW8 - 1u) / KW8;
    for (var step = 0u; step < nsteps; step++) {
        let kw0 = step * KW8;
        for (var r = 0u; r < 4u; r++) {                  // 128 rows x 8 words
            let e = tid + 256u * r;
            let rr = e / KW8;
            let ww = e % KW8;
            let row = row0 + rr;
            var v = 0u;
            if (row < q.n && kw0 + ww < q.k4) { v = xq[row * q.k4 + kw0 + ww]; }
            a8[ww * LD8 + rr / 4u][rr % 4u] = v;
        }
        {                                                // 128 cols x 2 weight words
            let cc = tid / 2u;
            let qw = tid % 2u;
            let col = col0 + cc;
            let word = step * 2u + qw;
            var pw = 0x55555555u;                        // all fields 1: zero weights
            if (col < q.out && word < q.k16) { pw = w[(q.wrow0 + col) * q.k16 + word]; }
            for (var b = 0u; b < 4u; b++) {
                b8[(qw * 4u + b) * LD8 + cc / 4u][cc % 4u] = decode4((pw >> (8u * b)) & 0xffu);
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < KW8; k++) {
            let a0 = a8[k * LD8 + lid.y];
            let a1 = a8[k * LD8 + 16u + lid.y];
            let b0 = b8[k * LD8 + lid.x];
            let b1 = b8[k * LD8 + 16u + lid.x];
            c00 += dot4x4(a0, b0, 0u); c01 += dot4x4(a0, b1, 0u);
            c10 += dot4x4(a0, b0, 1u); c11 += dot4x4(a0, b1, 1u);
            c20 += dot4x4(a0, b0, 2u); c21 += dot4x4(a0, b1, 2u);
            c30 += dot4x4(a0, b0, 3u); c31 += dot4x4(a0, b1, 3u);
            d00 += dot4x4(a1, b0, 0u); d01 += dot4x4(a1, b1, 0u);
            d10 += dot4x4(a1, b0, 1u); d11 += dot4x4(a1, b1, 1u);
            d20 += dot4x4(a1, b0, 2u); d21 += dot4x4(a1, b1, 2u);
            d30 += dot4x4(a1, b0, 3u); d31 += dot4x4(a1, b1, 3u);
        }
        workgroupBarrier();
    }
    return array<vec4<i32>, 16>(c00, c01, c10, c11, c20, c21, c30, c31,
                                d00, d01, d10, d11, d20, d21, d30, d31);
}

fn store_main(row: u32, col0: u32, v: vec4<i32>) {
    if (row >= p.n) { return; }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if (col >= p.out) { continue; }
        if (INT_OUT) {
            y[row * p.out + col] = bitcast<u32>(v[j]);
        } else {
            y[row * p.out + col] = bitcast<u32>(f32(v[j]) / (xs[row] * p.weight_scale));
        }
    }
}

fn store_main3(row: u32, col0: u32, v: vec4<i32>) {
    if (row >= p3.n) { return; }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if (col >= p3.out) { continue; }
        let a = f32(v[j]);
        if (col < p3.o1) {
            y[row * p3.o1 + col] = bitcast<u32>(a / (xs[row] * p3.weight_scale));
        } else if (col < p3.o2) {
            y1[row * (p3.o2 - p3.o1) + col - p3.o1] = bitcast<u32>(a / (xs[row] * p3.s1));
        } else {
            y2[row * (p3.out - p3.o2) + col - p3.o2] = bitcast<u32>(a / (xs[row] * p3.s2));
        }
    }
}

@compute @workgroup_size(16, 16)
fn main8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
    let c = tile8(wid, lid, tid, p);
    let r = wid.y * T8 + lid.y * 4u;
    let ca = wid.x * T8 + lid.x * 4u;
    let cb = ca + 64u;
    store_main(r, ca, c[0]); store_main(r, cb, c[1]);
    store_main(r + 1u, ca, c[2]); store_main(r + 1u, cb, c[3]);
    store_main(r + 2u, ca, c[4]); store_main(r + 2u, cb, c[5]);
    store_main(r + 3u, ca, c[6]); store_main(r + 3u, cb, c[7]);
    store_main(r + 64u, ca, c[8]); store_main(r + 64u, cb, c[9]);
    store_main(r + 65u, ca, c[10]); store_main(r + 65u, cb, c[11]);
    store_main(r + 66u, ca, c[12]); store_main(r + 66u, cb, c[13]);
    store_main(r + 67u, ca, c[14]); store_main(r + 67u, cb, c[15]);
}

@compute @workgroup_size(16, 16)
fn main3_8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let c = tile8(wid, lid, tid, p3);
    let r = wid.y * T8 + lid.y * 4u;
    let ca = wid.x * T8 + lid.x * 4u;
    let cb = ca + 64u;
    store_main3(r, ca, c[0]); store_main3(r, cb, c[1]);
    store_main3(r + 1u, ca, c[2]); store_main3(r + 1u, cb, c[3]);
    store_main3(r + 2u, ca, c[4]); store_main3(r + 2u, cb, c[5]);
    store_main3(r + 3u, ca, c[6]); store_main3(r + 3u, cb, c[7]);
    store_main3(r + 64u, ca, c[8]); store_main3(r + 64u, cb, c[9]);
    store_main3(r + 65u, ca, c[10]); store_main3(r + 65u, cb, c[11]);
    store_main3(r + 66u, ca, c[12]); store_main3(r + 66u, cb, c[13]);
    store_main3(r + 67u, ca, c[14]); store_main3(r + 67u, cb, c[15]);
}

// ---------------------------------------------------------------- split-K reduction
// One invocation per output: the sum of its `splits` int32 partials, then INT_OUT's raw store
// or the unsplit kernel's scale expression (same f32 ops, same rounding).
struct RParams { n: u32, out: u32, splits: u32, weight_scale: f32 }

@group(0) @binding(0) var<storage, read> part: array<i32>;
@group(0) @binding(1) var<storage, read> r_xs: array<f32>;
@group(0) @binding(2) var<storage, read_write> r_y: array<u32>;
@group(0) @binding(3) var<uniform> rp: RParams;

@compute @workgroup_size(256)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let total = rp.n * rp.out;
    if (i >= total) { return; }
    var acc = 0;
    for (var z = 0u; z < rp.splits; z++) { acc += part[z * total + i]; }
    if (INT_OUT) {
        r_y[i] = bitcast<u32>(acc);
    } else {
        r_y[i] = bitcast<u32>(f32(acc) / (r_xs[i / rp.out] * rp.weight_scale));
    }
}
