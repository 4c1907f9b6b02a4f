// Skinny matmul, contraction over the long axis of two tall inputs:
//   c (M, R) = alpha * p_mat (K, M)^T @ q (K, R)       (LoRA's dB = dy^T h)
// Reference: reference.py `matmul` with trans_a. (dA = dh^T x, the same form transposed, read
// 0.113 ms this way against 0.098 tiled on an H200 at 2048 tokens: it stays on matmul.wgsl.) R <= 16, M a multiple of 4; K is the token
// axis. Invocation i owns columns 4i..4i+3 of p_mat (one 16-byte load per row, contiguous across
// invocations) and 4 R sums; workgroup y sums K rows [y * kchunk, (y + 1) * kchunk) into slab y
// of `part` (S, M, R): many short slabs keep enough loads in flight to stream p_mat at memory
// bandwidth. Entry `reduce` adds the S slabs in order (deterministic) and applies alpha. q's rows of a K block are staged in workgroup memory (every invocation reads all).
override R: u32 = 8u;

struct Params { m: u32, k: u32, kchunk: u32 }

@group(0) @binding(0) var<storage, read> p_mat: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const RMAX: u32 = 16u;
const KB: u32 = 64u;                       // K rows per staged block
var<workgroup> q_s: array<f32, 1024>;      // KB x RMAX

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m4 = p.m / 4u;
    let i = wid.x * 256u + tid;             // column group: columns 4i .. 4i+3
    let k_lo = wid.y * p.kchunk;
    let k_hi = min(p.k, k_lo + p.kchunk);
    var acc: array<vec4<f32>, RMAX>;        // acc[j]: the 4 columns' sums with q column j
    for (var j = 0u; j < RMAX; j++) { acc[j] = vec4<f32>(0.0); }
    for (var k0 = k_lo; k0 < k_hi; k0 += KB) {
        let kn = min(KB, k_hi - k0);
        for (var e = tid; e < KB * R; e += 256u) {
            var v = 0.0;
            if (e / R < kn) { v = q[(k0 + e / R) * R + e % R]; }
            q_s[e] = v;
        }
        workgroupBarrier();
        if (i < m4) {
            for (var kk = 0u; kk < kn; kk++) {
                let pv = p_mat[(k0 + kk) * m4 + i];
                for (var j = 0u; j < R; j++) { acc[j] = fma(pv, vec4<f32>(q_s[kk * R + j]), acc[j]); }
            }
        }
        workgroupBarrier();
    }
    if (i < m4) {
        for (var t = 0u; t < 4u; t++) {
            for (var j = 0u; j < R; j++) {
                part[(wid.y * p.m + 4u * i + t) * R + j] = acc[j][t];
            }
        }
    }
}

struct RParams { m: u32, splits: u32, alpha: f32 }

@group(0) @binding(0) var<storage, read> r_part: array<f32>;
@group(0) @binding(1) var<storage, read_write> r_c: array<f32>;
@group(0) @binding(2) var<uniform> rp: RParams;

@compute @workgroup_size(256)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;          // index into (M, R)
    if (i >= rp.m * R) { return; }
    var s = 0.0;
    for (var z = 0u; z < rp.splits; z++) { s += r_part[z * rp.m * R + i]; }
    r_c[i] = s * rp.alpha;
}
