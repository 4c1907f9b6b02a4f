// Skinny matmul, few output columns: c (M, R) = alpha * a (M, K) @ op(b) (K, R), R <= 16.
// Reference: reference.py `matmul` (trans_a false). op(b): b stored (R, K) with TRANS_B (LoRA's
// h = x A^T), else (K, R) (dh = dy B). The LoRA products whose outputs have r columns: the
// 64 x 64-tile matmul.wgsl computes 64 columns per tile there, 8x the work for rank 8.
// Workgroup: 8 rows x 32 lanes; lane l sums k = l, l + 32, ... (a's rows read contiguously
// across lanes) into R registers, then the 32 lane sums of each column are added in a fixed
// tree in workgroup memory (deterministic, no atomics, no subgroup feature needed).
override TRANS_B: bool = false;
override R: u32 = 8u;

struct Params { m: u32, k: u32, alpha: f32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const RMAX: u32 = 16u;
var<workgroup> red: array<f32, 4096>;     // [column j][invocation]: RMAX x 256

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = (wid.x + wid.y * nwg.x) * 8u + tid / 32u;
    let lane = tid % 32u;
    var acc: array<f32, RMAX>;
    for (var j = 0u; j < RMAX; j++) { acc[j] = 0.0; }
    if (row < p.m) {
        for (var k = lane; k < p.k; k += 32u) {
            let av = a[row * p.k + k];
            for (var j = 0u; j < R; j++) {
                var bv: f32;
                if (TRANS_B) { bv = b[j * p.k + k]; } else { bv = b[k * R + j]; }
                acc[j] = fma(av, bv, acc[j]);
            }
        }
    }
    for (var j = 0u; j < R; j++) { red[j * 256u + tid] = acc[j]; }
    workgroupBarrier();
    for (var s = 16u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var j = 0u; j < R; j++) {
                red[j * 256u + tid] = red[j * 256u + tid] + red[j * 256u + tid + s];
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.m) {
        for (var j = 0u; j < R; j++) { c[row * R + j] = red[j * 256u + tid] * p.alpha; }
    }
}
