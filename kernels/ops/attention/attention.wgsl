// Causal GQA attention, forward and backward, tiled in the manner of FlashAttention-2.
// Reference: reference.py `attention`, `attention_backward`.
// Layouts (token-major, N = B*T, token n = b*T + t):
//   q, o, do, dq  f32 (N, Hq*hd);  k, v, dk, dv  f32 (N, Hkv*hd);  lse, dsum  f32 (B, Hq, T)
// Query head h reads KV head h / (Hq/Hkv); scale = 1/sqrt(hd) (f32, from the host); causal:
// query t sees keys j <= t. Row tensors bind as array<vec4<f32>> (buffers are 16-byte
// rounded); a row is 16-byte aligned only when hd % 4 == 0, else loads/stores go by component.
//
// Tiling: blocks of 32 query rows and 32 keys; 128 invocations as 8 x 16 (ty = tid / 16,
// tx = tid % 16). Invocation (ty, tx) owns rows ty*4 .. ty*4+3 of a 32x32 score tile (S, dP,
// or their transposes in backward_dkv) at columns tx and tx+16, and the same 4 rows of the
// 32 x hd output tile at vec4 columns tx, tx+16, .. (OV = ceil(hd/64) vec4 per row, kept in
// registers). Score tiles reduce over hd in chunks staged in workgroup memory (chunk rows
// padded to an odd number of vec4, so 16 rows read in parallel hit distinct banks); output
// tiles reduce over the 32 rows of the other block, VK whole rows staged at a time.
//   forward       one workgroup per (b, h, query block); online softmax over key blocks
//                 0..qb (blocks above the diagonal are skipped): running max m and sum l per
//                 row; o = acc / l, lse = m + log(l).
//   backward_dq   one per (b, h, query block): D = rowsum(dO*O) (also written to dsum), then
//                 over key blocks 0..qb: P = exp(S - lse), dS = P (dP - D), dQ += dS K scale.
//   backward_dkv  one per (b, query head h, key block): over query blocks kb..: dV += P^T dO,
//                 dK += dS^T Q scale, written per query head as (N, Hq*hd) (reads dsum: runs
//                 after backward_dq). With Hq == Hkv that is dk, dv; else backward_reduce sums
//                 the g = Hq/Hkv heads of each group (one workgroup per KV head would leave
//                 most of a big GPU idle at B*Hkv*T/32 workgroups).
// No atomics: each output element is summed by one invocation in a fixed order (deterministic).
// Workgroup memory (nothing scales with T): forward: stage 9 KiB (score chunks of 32 dims of
// q and k) + tile_a 4 KiB = 13 KiB;
// backward_dq: stage 10 KiB (score chunks of 16 dims of 4 tensors) + tile_a = 14 KiB;
// backward_dkv: stage 8 KiB (chunks of 8 dims) + tile_a + tile_b = 16 KiB.
// Override constants (gpu.py beside this file sets them): HD = head dim, OV = ceil(hd/64),
// VK = rows staged per output-reduction step (a power of two <= 32 with VK*ceil(hd/4) <= 512,
// <= 256 in backward_dkv, which stages two tensors), FCH / BCH = vec4 per forward / backward
// score chunk row.
struct Params { b: u32, t: u32, hq: u32, hkv: u32, hd: u32, scale: f32 }

override HD: u32 = 64u;
override OV: u32 = 1u;
override VK: u32 = 32u;
override D4: u32 = (HD + 3u) / 4u;      // vec4 per head row
override BCH: u32 = 2u;                 // backward: vec4 per staged chunk row (4 tensors staged)
override BCS: u32 = BCH + 1u;           //   its padded stride
override BSEG: u32 = BLK * BCS;         //   one staged tensor chunk
override FCH: u32 = 4u;                 // forward: vec4 per staged chunk row (4 or 8;
                                        //   the host sets 8: 4 keeps backward stages small)
override FCS: u32 = FCH + 1u;           //   its padded stride
override SSZ: u32 = max(max(512u, 4u * BSEG), 2u * BLK * FCS);   // stage size in vec4

const WG: u32 = 128u;
const BLK: u32 = 32u;        // query rows and keys per block
const NEG: f32 = -3.0e38;    // masked score (finite: max/exp stay NaN-free)

var<workgroup> stage: array<vec4<f32>, SSZ>;   // chunks / whole rows of q, k, v, do
var<workgroup> tile_a: array<vec4<f32>, 256>;  // 32 x 32 f32: P (fwd), dS (dq), P^T (dkv)
var<workgroup> tile_b: array<vec4<f32>, 256>;  // 32 x 32 f32: dS^T (dkv)

@group(0) @binding(0) var<storage, read> q4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> k4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> do4: array<vec4<f32>>;      // backward
@group(0) @binding(4) var<storage, read> lse_in: array<f32>;         // backward
// forward
@group(0) @binding(3) var<storage, read_write> o_out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(5) var<uniform> pf: Params;
// backward_dq
@group(0) @binding(5) var<storage, read> o4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> dq_out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dsum_out: array<f32>;
// backward_dkv (dk_out, dv_out: per query head, (N, Hq*hd))
@group(0) @binding(5) var<storage, read> dsum_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> dk_out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dv_out: array<vec4<f32>>;
@group(0) @binding(8) var<uniform> pb: Params;                       // backward

// Loads of 4 head dims d..d+3 at flat element index e (d < HD; dims >= HD read as 0).
// One helper per binding: a helper names its buffer, and an entry point may only touch its own.
fn ldq(e: u32, d: u32) -> vec4<f32> {
    if (HD % 4u == 0u) { return q4[e >> 2u]; }
    var x = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) { if (d + c < HD) { x[c] = q4[(e + c) >> 2u][(e + c) & 3u]; } }
    return x;
}
fn ldk(e: u32, d: u32) -> vec4<f32> {
    if (HD % 4u == 0u) { return k4[e >> 2u]; }
    var x = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) { if (d + c < HD) { x[c] = k4[(e + c) >> 2u][(e + c) & 3u]; } }
    return x;
}
fn ldv(e: u32, d: u32) -> vec4<f32> {
    if (HD % 4u == 0u) { return v4[e >> 2u]; }
    var x = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) { if (d + c < HD) { x[c] = v4[(e + c) >> 2u][(e + c) & 3u]; } }
    return x;
}
fn lddo(e: u32, d: u32) -> vec4<f32> {
    if (HD % 4u == 0u) { return do4[e >> 2u]; }
    var x = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) { if (d + c < HD) { x[c] = do4[(e + c) >> 2u][(e + c) & 3u]; } }
    return x;
}
fn ldo(e: u32, d: u32) -> vec4<f32> {
    if (HD % 4u == 0u) { return o4[e >> 2u]; }
    var x = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) { if (d + c < HD) { x[c] = o4[(e + c) >> 2u][(e + c) & 3u]; } }
    return x;
}
fn sto(e: u32, d: u32, x: vec4<f32>) {
    if (HD % 4u == 0u) { o_out[e >> 2u] = x; return; }
    for (var c = 0u; c < 4u; c++) {
        if (d + c < HD) { o_out[(e + c) >> 2u][(e + c) & 3u] = x[c]; }
    }
}
fn stdq(e: u32, d: u32, x: vec4<f32>) {
    if (HD % 4u == 0u) { dq_out[e >> 2u] = x; return; }
    for (var c = 0u; c < 4u; c++) {
        if (d + c < HD) { dq_out[(e + c) >> 2u][(e + c) & 3u] = x[c]; }
    }
}
fn stdk(e: u32, d: u32, x: vec4<f32>) {
    if (HD % 4u == 0u) { dk_out[e >> 2u] = x; return; }
    for (var c = 0u; c < 4u; c++) {
        if (d + c < HD) { dk_out[(e + c) >> 2u][(e + c) & 3u] = x[c]; }
    }
}
fn stdv(e: u32, d: u32, x: vec4<f32>) {
    if (HD % 4u == 0u) { dv_out[e >> 2u] = x; return; }
    for (var c = 0u; c < 4u; c++) {
        if (d + c < HD) { dv_out[(e + c) >> 2u][(e + c) & 3u] = x[c]; }
    }
}

fn row_max(r: u32) -> f32 {          // max of row r of tile_a
    var m = NEG;
    for (var c = 0u; c < 8u; c++) {
        let x = tile_a[r * 8u + c];
        m = max(m, max(max(x.x, x.y), max(x.z, x.w)));
    }
    return m;
}

// Staging is split into a load into registers and a store to `stage`: each loop step loads
// the next step's data before computing on the current one, so global latency hides behind
// the math even with few workgroups per SM. Rows past T and dims past hd stage as zeros.

// forward score chunk: vec4 columns c0 .. c0+FCH-1 of q rows q0.. and k rows k0..; element
// e = tid + 128u (row e / FCH) goes to stage[row*FCS + col] (q), stage[BLK*FCS + ..] (k).
fn fwd_chunk(tid: u32, c0: u32, q0: u32, k0: u32, tt: u32, qbase: u32, qstr: u32, kbase: u32,
             kstr: u32) -> array<vec4<f32>, 4> {
    var x: array<vec4<f32>, 4>;                // [u]: q, [2 + u]: k
    for (var u = 0u; u < FCH / 4u; u++) {
        let e = tid + u * WG;
        let r = e / FCH;
        let c = c0 + e % FCH;
        if (c < D4) {
            if (q0 + r < tt) { x[u] = ldq(qbase + (q0 + r) * qstr + 4u * c, 4u * c); }
            if (k0 + r < tt) { x[2u + u] = ldk(kbase + (k0 + r) * kstr + 4u * c, 4u * c); }
        }
    }
    return x;
}
fn fwd_chunk_store(tid: u32, x: array<vec4<f32>, 4>) {
    for (var u = 0u; u < FCH / 4u; u++) {
        let e = tid + u * WG;
        let i = (e / FCH) * FCS + e % FCH;
        stage[i] = x[u];
        stage[BLK * FCS + i] = x[2u + u];
    }
}

// backward score chunk: vec4 columns c0 .. c0+BCH-1 of 32 rows each of q, do (rows q0..) and
// k, v (rows k0..); element e = tid + 128u of tensor a = e / (32*BCH) goes to
// stage[a*BSEG + row*BCS + col].
fn bwd_chunk(tid: u32, c0: u32, q0: u32, k0: u32, tt: u32, qbase: u32, qstr: u32, kbase: u32,
             kstr: u32) -> array<vec4<f32>, 4> {
    var x: array<vec4<f32>, 4>;
    for (var u = 0u; u < BCH; u++) {
        let e = tid + u * WG;
        let a = e / (BLK * BCH);               // tensor: 0 q, 1 do, 2 k, 3 v (warp-uniform)
        let r = (e / BCH) % BLK;
        let c = c0 + e % BCH;
        if (c < D4) {
            if (a < 2u) {
                if (q0 + r < tt) {
                    let ei = qbase + (q0 + r) * qstr + 4u * c;
                    if (a == 0u) { x[u] = ldq(ei, 4u * c); } else { x[u] = lddo(ei, 4u * c); }
                }
            } else if (k0 + r < tt) {
                let ei = kbase + (k0 + r) * kstr + 4u * c;
                if (a == 2u) { x[u] = ldk(ei, 4u * c); } else { x[u] = ldv(ei, 4u * c); }
            }
        }
    }
    return x;
}
fn bwd_chunk_store(tid: u32, x: array<vec4<f32>, 4>) {
    for (var u = 0u; u < BCH; u++) {
        let e = tid + u * WG;
        stage[(e / (BLK * BCH)) * BSEG + ((e / BCH) % BLK) * BCS + e % BCH] = x[u];
    }
}

// whole rows r0 .. r0+VK-1 (VK*D4 <= 512 vec4): element e = tid + 128u of row e / D4 goes to
// stage[e]. rows_v: v rows (forward), rows_k: k rows (backward_dq).
fn rows_v(tid: u32, r0: u32, tt: u32, base: u32, str: u32) -> array<vec4<f32>, 4> {
    var x: array<vec4<f32>, 4>;
    for (var u = 0u; u < 4u; u++) {
        let e = tid + u * WG;
        let r = r0 + e / D4;
        let c = e % D4;
        if (e < VK * D4 && r < tt) { x[u] = ldv(base + r * str + 4u * c, 4u * c); }
    }
    return x;
}
fn rows_k(tid: u32, r0: u32, tt: u32, base: u32, str: u32) -> array<vec4<f32>, 4> {
    var x: array<vec4<f32>, 4>;
    for (var u = 0u; u < 4u; u++) {
        let e = tid + u * WG;
        let r = r0 + e / D4;
        let c = e % D4;
        if (e < VK * D4 && r < tt) { x[u] = ldk(base + r * str + 4u * c, 4u * c); }
    }
    return x;
}
fn rows_store(tid: u32, x: array<vec4<f32>, 4>) {
    for (var u = 0u; u < 4u; u++) {
        let e = tid + u * WG;
        if (e < VK * D4) { stage[e] = x[u]; }
    }
}
// backward_dkv: do and q rows r0 .. (VK*D4 <= 256): do at stage[e], q at stage[VK*D4 + e].
fn rows_doq(tid: u32, r0: u32, tt: u32, base: u32, str: u32) -> array<vec4<f32>, 4> {
    var x: array<vec4<f32>, 4>;
    for (var u = 0u; u < 2u; u++) {
        let e = tid + u * WG;
        let r = r0 + e / D4;
        let c = e % D4;
        if (e < VK * D4 && r < tt) {
            let ei = base + r * str + 4u * c;
            x[u] = lddo(ei, 4u * c);
            x[2u + u] = ldq(ei, 4u * c);
        }
    }
    return x;
}
fn rows_doq_store(tid: u32, x: array<vec4<f32>, 4>) {
    for (var u = 0u; u < 2u; u++) {
        let e = tid + u * WG;
        if (e < VK * D4) {
            stage[e] = x[u];
            stage[VK * D4 + e] = x[2u + u];
        }
    }
}

// ---------------------------------------------------------------- forward
@compute @workgroup_size(128)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let nqb = (pf.t + BLK - 1u) / BLK;
    let wi = wid.x + wid.y * nwg.x;
    let nbh = pf.b * pf.hq;
    if (wi >= nbh * nqb) { return; }
    let qb = nqb - 1u - wi / nbh;              // the longest rows first (dispatch order)
    let h = (wi % nbh) % pf.hq;
    let bb = (wi % nbh) / pf.hq;
    let kvh = h / (pf.hq / pf.hkv);
    let tt = pf.t;
    let qstr = pf.hq * HD;                     // token stride of q / o
    let kstr = pf.hkv * HD;
    let qbase = bb * tt * qstr + h * HD;
    let kbase = bb * tt * kstr + kvh * HD;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let q0 = qb * BLK;
    var m: array<f32, 4>;
    var l: array<f32, 4>;
    var acc: array<vec4<f32>, 16>;             // [row i * 4 + vec4 column c]
    for (var i = 0u; i < 4u; i++) { m[i] = NEG; l[i] = 0.0; }
    for (var c = 0u; c < 16u; c++) { acc[c] = vec4<f32>(0.0); }
    var pc = fwd_chunk(tid, 0u, q0, 0u, tt, qbase, qstr, kbase, kstr);
    var pv: array<vec4<f32>, 4>;
    for (var kb = 0u; kb <= qb; kb++) {
        let k0 = kb * BLK;
        var s: array<f32, 8>;                  // [row i * 2 + key column jj]
        for (var i = 0u; i < 8u; i++) { s[i] = 0.0; }
        for (var c0 = 0u; c0 < D4; c0 += FCH) {
            workgroupBarrier();
            fwd_chunk_store(tid, pc);
            workgroupBarrier();
            if (c0 + FCH < D4) {
                pc = fwd_chunk(tid, c0 + FCH, q0, k0, tt, qbase, qstr, kbase, kstr);
            } else {
                pv = rows_v(tid, k0, tt, kbase, kstr);
            }
            for (var cc = 0u; cc < FCH; cc++) {
                let ka = stage[BLK * FCS + tx * FCS + cc];
                let kc = stage[BLK * FCS + (tx + 16u) * FCS + cc];
                for (var i = 0u; i < 4u; i++) {
                    let qv = stage[(ty * 4u + i) * FCS + cc];
                    s[i * 2u] += dot(qv, ka);
                    s[i * 2u + 1u] += dot(qv, kc);
                }
            }
        }
        // scaled, masked scores -> tile_a; the row max needs all 16 invocations of a row
        for (var i = 0u; i < 4u; i++) {
            let r = ty * 4u + i;
            for (var jj = 0u; jj < 2u; jj++) {
                let jl = tx + 16u * jj;
                let x = select(NEG, s[i * 2u + jj] * pf.scale, k0 + jl <= q0 + r);
                s[i * 2u + jj] = x;
                tile_a[r * 8u + jl / 4u][jl % 4u] = x;
            }
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            // every row sees key k0 <= q0 of this block, so mn is finite from the first block
            let mn = max(m[i], row_max(ty * 4u + i));
            let alpha = exp(m[i] - mn);
            m[i] = mn;
            l[i] *= alpha;
            for (var c = 0u; c < OV; c++) { acc[i * 4u + c] *= alpha; }
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let r = ty * 4u + i;
            for (var jj = 0u; jj < 2u; jj++) {
                let jl = tx + 16u * jj;
                let x = s[i * 2u + jj];
                tile_a[r * 8u + jl / 4u][jl % 4u] = select(0.0, exp(x - m[i]), x > NEG);
            }
        }
        // acc += P V over VK staged rows of V at a time (l sums P in the same order everywhere)
        for (var j0 = 0u; j0 < BLK; j0 += VK) {
            workgroupBarrier();
            rows_store(tid, pv);
            workgroupBarrier();
            if (j0 + VK < BLK) {
                pv = rows_v(tid, k0 + j0 + VK, tt, kbase, kstr);
            } else if (kb < qb) {
                pc = fwd_chunk(tid, 0u, q0, k0 + BLK, tt, qbase, qstr, kbase, kstr);
            }
            for (var jj = 0u; jj < VK; jj++) {
                let jl = j0 + jj;
                var pr: array<f32, 4>;
                for (var i = 0u; i < 4u; i++) {
                    pr[i] = tile_a[(ty * 4u + i) * 8u + jl / 4u][jl % 4u];
                    l[i] += pr[i];
                }
                for (var c = 0u; c < OV; c++) {
                    let col = tx + 16u * c;
                    if (col < D4) {
                        let vv = stage[jj * D4 + col];
                        for (var i = 0u; i < 4u; i++) { acc[i * 4u + c] += pr[i] * vv; }
                    }
                }
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let t = q0 + ty * 4u + i;
        if (t < tt) {
            for (var c = 0u; c < OV; c++) {
                let col = tx + 16u * c;
                if (col < D4) {
                    sto(qbase + t * qstr + 4u * col, 4u * col, acc[i * 4u + c] / l[i]);
                }
            }
            if (tx == 0u) { lse_out[(bb * pf.hq + h) * tt + t] = m[i] + log(l[i]); }
        }
    }
}

// ---------------------------------------------------------------- backward: dq (+ dsum)
@compute @workgroup_size(128)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) tid: u32) {
    let nqb = (pb.t + BLK - 1u) / BLK;
    let wi = wid.x + wid.y * nwg.x;
    let nbh = pb.b * pb.hq;
    if (wi >= nbh * nqb) { return; }
    let qb = nqb - 1u - wi / nbh;              // the longest rows first
    let h = (wi % nbh) % pb.hq;
    let bb = (wi % nbh) / pb.hq;
    let kvh = h / (pb.hq / pb.hkv);
    let tt = pb.t;
    let qstr = pb.hq * HD;
    let kstr = pb.hkv * HD;
    let qbase = bb * tt * qstr + h * HD;
    let kbase = bb * tt * kstr + kvh * HD;
    let srow = (bb * pb.hq + h) * tt;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let q0 = qb * BLK;
    var pc = bwd_chunk(tid, 0u, q0, 0u, tt, qbase, qstr, kbase, kstr);
    var pk: array<vec4<f32>, 4>;
    // D = rowsum(dO * O): 16 partial sums per row through tile_a, added in a fixed order
    for (var i = 0u; i < 4u; i++) {
        let t = q0 + ty * 4u + i;
        var part = 0.0;
        if (t < tt) {
            for (var col = tx; col < D4; col += 16u) {
                let ei = qbase + t * qstr + 4u * col;
                part += dot(lddo(ei, 4u * col), ldo(ei, 4u * col));
            }
        }
        tile_a[(ty * 4u + i) * 4u + tx / 4u][tx % 4u] = part;
    }
    workgroupBarrier();
    var dr: array<f32, 4>;
    var lr: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) {
        let r = ty * 4u + i;
        var sum = 0.0;
        for (var c = 0u; c < 4u; c++) {
            let x = tile_a[r * 4u + c];
            sum += (x.x + x.y) + (x.z + x.w);
        }
        dr[i] = sum;
        let t = q0 + r;
        lr[i] = 0.0;
        if (t < tt) {
            lr[i] = lse_in[srow + t];
            if (tx == 0u) { dsum_out[srow + t] = sum; }
        }
    }
    var acc: array<vec4<f32>, 16>;
    for (var c = 0u; c < 16u; c++) { acc[c] = vec4<f32>(0.0); }
    for (var kb = 0u; kb <= qb; kb++) {
        let k0 = kb * BLK;
        var s: array<f32, 8>;
        var dp: array<f32, 8>;
        for (var i = 0u; i < 8u; i++) { s[i] = 0.0; dp[i] = 0.0; }
        for (var c0 = 0u; c0 < D4; c0 += BCH) {
            workgroupBarrier();              // also: tile_a's readers are done
            bwd_chunk_store(tid, pc);
            workgroupBarrier();
            if (c0 + BCH < D4) {
                pc = bwd_chunk(tid, c0 + BCH, q0, k0, tt, qbase, qstr, kbase, kstr);
            } else {
                pk = rows_k(tid, k0, tt, kbase, kstr);
            }
            for (var cc = 0u; cc < BCH; cc++) {
                let ka = stage[2u * BSEG + tx * BCS + cc];
                let kc = stage[2u * BSEG + (tx + 16u) * BCS + cc];
                let va = stage[3u * BSEG + tx * BCS + cc];
                let vc = stage[3u * BSEG + (tx + 16u) * BCS + cc];
                for (var i = 0u; i < 4u; i++) {
                    let qv = stage[(ty * 4u + i) * BCS + cc];
                    let gv = stage[BSEG + (ty * 4u + i) * BCS + cc];
                    s[i * 2u] += dot(qv, ka);
                    s[i * 2u + 1u] += dot(qv, kc);
                    dp[i * 2u] += dot(gv, va);
                    dp[i * 2u + 1u] += dot(gv, vc);
                }
            }
        }
        for (var i = 0u; i < 4u; i++) {
            let r = ty * 4u + i;
            for (var jj = 0u; jj < 2u; jj++) {
                let jl = tx + 16u * jj;
                var ds = 0.0;
                if (k0 + jl <= q0 + r && q0 + r < tt) {
                    let p = exp(s[i * 2u + jj] * pb.scale - lr[i]);
                    ds = p * (dp[i * 2u + jj] - dr[i]);
                }
                tile_a[r * 8u + jl / 4u][jl % 4u] = ds;
            }
        }
        // acc += dS K over VK staged rows of K at a time
        for (var j0 = 0u; j0 < BLK; j0 += VK) {
            workgroupBarrier();
            rows_store(tid, pk);
            workgroupBarrier();
            if (j0 + VK < BLK) {
                pk = rows_k(tid, k0 + j0 + VK, tt, kbase, kstr);
            } else if (kb < qb) {
                pc = bwd_chunk(tid, 0u, q0, k0 + BLK, tt, qbase, qstr, kbase, kstr);
            }
            for (var jj = 0u; jj < VK; jj++) {
                let jl = j0 + jj;
                var g: array<f32, 4>;
                for (var i = 0u; i < 4u; i++) {
                    g[i] = tile_a[(ty * 4u + i) * 8u + jl / 4u][jl % 4u];
                }
                for (var c = 0u; c < OV; c++) {
                    let col = tx + 16u * c;
                    if (col < D4) {
                        let kv = stage[jj * D4 + col];
                        for (var i = 0u; i < 4u; i++) { acc[i * 4u + c] += g[i] * kv; }
                    }
                }
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let t = q0 + ty * 4u + i;
        if (t < tt) {
            for (var c = 0u; c < OV; c++) {
                let col = tx + 16u * c;
                if (col < D4) {
                    stdq(qbase + t * qstr + 4u * col, 4u * col, acc[i * 4u + c] * pb.scale);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- backward: dk, dv
@compute @workgroup_size(128)
fn backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let nqb = (pb.t + BLK - 1u) / BLK;
    let wi = wid.x + wid.y * nwg.x;
    let nbh = pb.b * pb.hq;
    if (wi >= nbh * nqb) { return; }
    let kb = wi / nbh;                         // low key blocks see the most queries: first
    let h = (wi % nbh) % pb.hq;
    let bb = (wi % nbh) / pb.hq;
    let kvh = h / (pb.hq / pb.hkv);
    let tt = pb.t;
    let qstr = pb.hq * HD;
    let kstr = pb.hkv * HD;
    let kbase = bb * tt * kstr + kvh * HD;
    let qbase = bb * tt * qstr + h * HD;
    let srow = (bb * pb.hq + h) * tt;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let k0 = kb * BLK;
    var acc_k: array<vec4<f32>, 16>;           // [key row i * 4 + vec4 column c]
    var acc_v: array<vec4<f32>, 16>;
    for (var c = 0u; c < 16u; c++) { acc_k[c] = vec4<f32>(0.0); acc_v[c] = vec4<f32>(0.0); }
    var pc = bwd_chunk(tid, 0u, k0, k0, tt, qbase, qstr, kbase, kstr);
    var pq: array<vec4<f32>, 4>;
    for (var qb = kb; qb < nqb; qb++) {
        let q0 = qb * BLK;
        var lt: array<f32, 2>;                 // lse and D of query columns tx, tx+16
        var dt: array<f32, 2>;
        for (var jj = 0u; jj < 2u; jj++) {
            let t = q0 + tx + 16u * jj;
            if (t < tt) { lt[jj] = lse_in[srow + t]; dt[jj] = dsum_in[srow + t]; }
        }
        var s: array<f32, 8>;                  // [key row i * 2 + query column jj]
        var dp: array<f32, 8>;
        for (var i = 0u; i < 8u; i++) { s[i] = 0.0; dp[i] = 0.0; }
        for (var c0 = 0u; c0 < D4; c0 += BCH) {
            workgroupBarrier();                // also: tile_a/tile_b's readers are done
            bwd_chunk_store(tid, pc);
            workgroupBarrier();
            if (c0 + BCH < D4) {
                pc = bwd_chunk(tid, c0 + BCH, q0, k0, tt, qbase, qstr, kbase, kstr);
            } else {
                pq = rows_doq(tid, q0, tt, qbase, qstr);
            }
            for (var cc = 0u; cc < BCH; cc++) {
                let qa = stage[tx * BCS + cc];
                let qc = stage[(tx + 16u) * BCS + cc];
                let ga = stage[BSEG + tx * BCS + cc];
                let gc = stage[BSEG + (tx + 16u) * BCS + cc];
                for (var i = 0u; i < 4u; i++) {
                    let kv = stage[2u * BSEG + (ty * 4u + i) * BCS + cc];
                    let vv = stage[3u * BSEG + (ty * 4u + i) * BCS + cc];
                    s[i * 2u] += dot(qa, kv);
                    s[i * 2u + 1u] += dot(qc, kv);
                    dp[i * 2u] += dot(ga, vv);
                    dp[i * 2u + 1u] += dot(gc, vv);
                }
            }
        }
        for (var jj = 0u; jj < 2u; jj++) {
            let il = tx + 16u * jj;
            let t = q0 + il;
            for (var i = 0u; i < 4u; i++) {
                let r = ty * 4u + i;
                var p = 0.0;
                if (k0 + r <= t && t < tt) { p = exp(s[i * 2u + jj] * pb.scale - lt[jj]); }
                tile_a[r * 8u + il / 4u][il % 4u] = p;
                tile_b[r * 8u + il / 4u][il % 4u] = p * (dp[i * 2u + jj] - dt[jj]);
            }
        }
        // acc_v += P^T dO, acc_k += dS^T Q over VK staged query rows (dO, then Q) at a time
        for (var i0 = 0u; i0 < BLK; i0 += VK) {
            workgroupBarrier();
            rows_doq_store(tid, pq);
            workgroupBarrier();
            if (i0 + VK < BLK) {
                pq = rows_doq(tid, q0 + i0 + VK, tt, qbase, qstr);
            } else if (qb + 1u < nqb) {
                pc = bwd_chunk(tid, 0u, q0 + BLK, k0, tt, qbase, qstr, kbase, kstr);
            }
            for (var ii = 0u; ii < VK; ii++) {
                let il = i0 + ii;
                var pr: array<f32, 4>;
                var dr: array<f32, 4>;
                for (var i = 0u; i < 4u; i++) {
                    pr[i] = tile_a[(ty * 4u + i) * 8u + il / 4u][il % 4u];
                    dr[i] = tile_b[(ty * 4u + i) * 8u + il / 4u][il % 4u];
                }
                for (var c = 0u; c < OV; c++) {
                    let col = tx + 16u * c;
                    if (col < D4) {
                        let gv = stage[ii * D4 + col];
                        let qv = stage[VK * D4 + ii * D4 + col];
                        for (var i = 0u; i < 4u; i++) {
                            acc_v[i * 4u + c] += pr[i] * gv;
                            acc_k[i * 4u + c] += dr[i] * qv;
                        }
                    }
                }
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let j = k0 + ty * 4u + i;
        if (j < tt) {
            for (var c = 0u; c < OV; c++) {
                let col = tx + 16u * c;
                if (col < D4) {
                    let ei = qbase + j * qstr + 4u * col;
                    stdk(ei, 4u * col, acc_k[i * 4u + c] * pb.scale);
                    stdv(ei, 4u * col, acc_v[i * 4u + c]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- backward: sum over the group
// dk[n, kvh*hd + d] = sum over hh < g of dk_h[n, (kvh*g + hh)*hd + d] (same for dv), hh in order.
@group(0) @binding(0) var<storage, read> red_dkh: array<f32>;
@group(0) @binding(1) var<storage, read> red_dvh: array<f32>;
@group(0) @binding(2) var<storage, read_write> red_dk: array<f32>;
@group(0) @binding(3) var<storage, read_write> red_dv: array<f32>;
@group(0) @binding(4) var<uniform> pr: Params;

@compute @workgroup_size(256)
fn backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) tid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 256u + tid;
    let kw = pr.hkv * pr.hd;
    if (e >= pr.b * pr.t * kw) { return; }
    let n = e / kw;
    let g = pr.hq / pr.hkv;
    let src = n * pr.hq * pr.hd + ((e % kw) / pr.hd) * g * pr.hd + e % pr.hd;
    var sk = 0.0;
    var sv = 0.0;
    for (var hh = 0u; hh < g; hh++) {
        sk += red_dkh[src + hh * pr.hd];
        sv += red_dvh[src + hh * pr.hd];
    }
    red_dk[e] = sk;
    red_dv[e] = sv;
}
