// Fused LoRA forward on a BitLinear output: h = x A^T and y += s * h B^T in ONE dispatch (the
// unfused path is a split-K matmul + its reduce + a copy + a matmul: four commands of tiny,
// latency-bound work per projection). Reference: kernels/reference.py `lora_forward`.
//   x f32 (N, K) the projection's unquantized input;  a f32 (R, K) LoRA A;  b f32 (OUT, R) LoRA B
//   y f32 (N, OUT) updated in place;  h f32 (N, R) written by the workgroups of column block 0
// Tiling: one workgroup of 256 per 64 rows x 64 output columns. Phase 1 computes the block's
// h (64 x R): invocation t owns row t/4 and ranks t%4, t%4+4, ... (R/4 of them, in registers),
// reading x and A straight from global memory (the 4 invocations of a row read the same x
// element and all rows the same A elements, so L1 serves them; no barriers in the K loop).
// Every column block recomputes its rows' h (K*R FMAs per row, as many as its 64 x R x 64
// outputs), which keeps all N/64 x OUT/64 workgroups busy instead of N/64. Phase 2: each
// invocation adds s * h_row . B_col to 4 x 4 outputs, reading B from global memory (L1).
// R <= RMAX (32); the host falls back to two matmuls above it. Workgroup memory: 8 KiB.
struct Params { n: u32, k: u32, out: u32, r: u32, s: f32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const TS: u32 = 64u;
const RMAX: u32 = 32u;
const RPT: u32 = RMAX / 4u;              // ranks per invocation in phase 1, at most
var<workgroup> h_t: array<f32, 2048>;    // TS * RMAX: [row][rank]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let col0 = wid.x * TS;
    let row0 = wid.y * TS;
    let my_row = tid / 4u;
    let lane = tid % 4u;
    let nr = (p.r + 3u - lane) / 4u;     // ranks lane, lane+4, ... below R
    var acc: array<f32, 8>;              // RPT
    for (var i = 0u; i < RPT; i++) { acc[i] = 0.0; }
    let row = row0 + my_row;
    if (row < p.n) {
        for (var k = 0u; k < p.k; k++) {
            let xv = x[row * p.k + k];
            for (var i = 0u; i < nr; i++) { acc[i] += xv * a[(lane + 4u * i) * p.k + k]; }
        }
    }
    for (var i = 0u; i < nr; i++) {
        let j = lane + 4u * i;
        h_t[my_row * RMAX + j] = acc[i];
        if (wid.x == 0u && row < p.n) { h[row * p.r + j] = acc[i]; }
    }
    workgroupBarrier();
    let ty = tid / 16u;
    let tx = tid % 16u;
    for (var ii = 0u; ii < 4u; ii++) {
        let rr = ty * 4u + ii;
        let r_ = row0 + rr;
        if (r_ >= p.n) { continue; }
        for (var jj = 0u; jj < 4u; jj++) {
            let col = col0 + tx * 4u + jj;
            if (col >= p.out) { continue; }
            var d = 0.0;
            for (var j = 0u; j < p.r; j++) { d += h_t[rr * RMAX + j] * b[col * p.r + j]; }
            y[r_ * p.out + col] += p.s * d;
        }
    }
}
