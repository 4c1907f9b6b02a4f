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
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ACC: bool = false;
override SPLIT: bool = false;
override B_F16: bool = false;

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
            var nn: u32; var kb: u32;
            if (TRANS_B) { nn = e / KS; kb = e % KS; } else { nn = e % TS; kb = e / TS; }
            var bv = 0.0;
            if (n0 + nn < p.n && k0 + kb < k_hi) {
                if (TRANS_B) { bv = load_b(p.b_off + (n0 + nn) * p.k + k0 + kb); }
                else { bv = load_b(p.b_off + (k0 + kb) * p.n + n0 + nn); }
            }
            b_t[kb * LD4 + nn / 4u][nn % 4u] = bv;
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
