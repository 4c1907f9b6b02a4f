// Skinny matmul, few output columns: c (M, R) = alpha * a (M, K) @ b (R, K)^T, R <= 16, K a
// multiple of 4: LoRA's h = x A^T. Reference: reference.py `matmul` (trans_b). The 64 x 64-tile
// matmul.wgsl computes 64 columns per tile there (8x the work for rank 8) and reads a with too
// few loads in flight to reach memory bandwidth: 0.108 ms against 0.068 here for 2048 x 2560
// -> 8 on an H200. (b stored (K, R), dh = dy B, ran 3x slower this way than tiled: 4 strided
// loads of b per column and step; it stays on matmul.wgsl.)
// Workgroup: 8 rows x 32 lanes; lane l reads a's row as vec4 at k = 4l, 4l + 128, ... (16 B per
// load, contiguous across lanes) into R sums, then the 32 lane sums of each column are added in
// a fixed tree in workgroup memory (deterministic, no atomics, no subgroup feature needed).
override R: u32 = 8u;

struct Params { m: u32, k: u32, alpha: f32 }

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const RMAX: u32 = 16u;
var<workgroup> red: array<f32, 4096>;     // [column j][invocation]: RMAX x 256

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = (wid.x + wid.y * nwg.x) * 8u + tid / 32u;
    let lane = tid % 32u;
    let k4 = p.k / 4u;
    var acc: array<f32, RMAX>;
    for (var j = 0u; j < RMAX; j++) { acc[j] = 0.0; }
    if (row < p.m) {
        for (var q = lane; q < k4; q += 32u) {
            let av = a[row * k4 + q];
            for (var j = 0u; j < R; j++) {
                let bv = b[j * k4 + q];
                acc[j] = fma(av.w, bv.w, fma(av.z, bv.z, fma(av.y, bv.y, fma(av.x, bv.x, acc[j]))));
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
