// Dense fp32 matmul: c = alpha * op(a) @ op(b) (+ c when ACC: the host first copies `acc`
// into c). Reference: kernels/reference.py `matmul`. op(a) (M, K): a stored (M, K), or (K, M)
// with TRANS_A; op(b) (K, N): b stored (K, N), or (N, K) with TRANS_B; c f32 (M, N).
// Used for LoRA A/B forward and backward and the lm_head.
// Tiling: 16x16 invocations, 64x64 outputs per workgroup (4x4 per invocation), K steps of 16.
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ACC: bool = false;

struct Params { m: u32, n: u32, k: u32, alpha: f32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const TS: u32 = 64u;
const KS: u32 = 16u;
var<workgroup> a_t: array<f32, 1024>;   // [k][m]
var<workgroup> b_t: array<f32, 1024>;   // [k][n]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * TS;
    let m0 = wid.y * TS;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }
    let nsteps = (p.k + KS - 1u) / KS;
    for (var step = 0u; step < nsteps; step++) {
        let k0 = step * KS;
        for (var r = 0u; r < 4u; r++) {
            let e = tid + 256u * r;
            // a tile: 64 (m) x 16 (k); consecutive invocations walk a's contiguous axis
            var mm: u32; var kk: u32;
            if (TRANS_A) { mm = e % TS; kk = e / TS; } else { mm = e / KS; kk = e % KS; }
            var av = 0.0;
            if (m0 + mm < p.m && k0 + kk < p.k) {
                if (TRANS_A) { av = a[(k0 + kk) * p.m + m0 + mm]; }
                else { av = a[(m0 + mm) * p.k + k0 + kk]; }
            }
            a_t[kk * TS + mm] = av;
            // b tile: 16 (k) x 64 (n)
            var nn: u32; var kb: u32;
            if (TRANS_B) { nn = e / KS; kb = e % KS; } else { nn = e % TS; kb = e / TS; }
            var bv = 0.0;
            if (n0 + nn < p.n && k0 + kb < p.k) {
                if (TRANS_B) { bv = b[(n0 + nn) * p.k + k0 + kb]; }
                else { bv = b[(k0 + kb) * p.n + n0 + nn]; }
            }
            b_t[kb * TS + nn] = bv;
        }
        workgroupBarrier();
        for (var k = 0u; k < KS; k++) {
            var av4: array<f32, 4>;
            var bv4: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) { av4[i] = a_t[k * TS + lid.y + 16u * i]; }
            for (var j = 0u; j < 4u; j++) { bv4[j] = b_t[k * TS + lid.x + 16u * j]; }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] += av4[i] * bv4[j]; }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + lid.y + 16u * i;
        if (m >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + lid.x + 16u * j;
            if (n >= p.n) { continue; }
            var v = acc[i][j] * p.alpha;
            if (ACC) { v = c[m * p.n + n] + v; }
            c[m * p.n + n] = v;
        }
    }
}
