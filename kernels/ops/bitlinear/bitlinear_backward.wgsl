// Straight-through input gradient of BitLinear: dx = dy @ (codes / weight_scale) (+ dx when
// ACC: the host first copies `acc` into dx). Reference: reference.py
// `bitlinear_backward`. dy f32 (N, OUT); w the same 2-bit packed codes as bitlinear.wgsl
// (OUT rows from row wrow0, K16 = ceil(K/16) words each); dx f32 (N, K). fp32 accumulation.
// Tiling: 16x16 invocations, 64 (n) x 64 (k) outputs per workgroup, OUT in steps of 16. Each
// invocation owns 4 consecutive n x 4 consecutive k; tiles are stored [o][n/4] and [o][k/4] as
// vec4, so the inner loop reads two vec4 per 16 FMAs.
override ACC: bool = false;

struct Params { n: u32, out: u32, k: u32, k16: u32, weight_scale: f32, wrow0: u32 }

@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const TS: u32 = 64u;
const OS: u32 = 16u;
const LD4: u32 = 17u;                          // vec4 stride per o (16 + 1 pad)
var<workgroup> g_t: array<vec4<f32>, 272>;    // dy tile [o][n/4]
var<workgroup> c_t: array<vec4<f32>, 272>;    // codes tile [o][k/4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let k0 = wid.x * TS;
    let n0 = wid.y * TS;
    var acc0 = vec4<f32>(0.0);       // vec4 accumulators: registers, not an indexed array
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let nsteps = (p.out + OS - 1u) / OS;
    for (var step = 0u; step < nsteps; step++) {
        let o0 = step * OS;
        for (var r = 0u; r < 4u; r++) {
            let e = tid + 256u * r;
            let nn = e / OS;
            let oo = e % OS;
            var v = 0.0;
            if (n0 + nn < p.n && o0 + oo < p.out) { v = dy[(n0 + nn) * p.out + o0 + oo]; }
            g_t[oo * LD4 + nn / 4u][nn % 4u] = v;
        }
        if (tid < 64u) {
            let oo = tid / 4u;
            let q = tid % 4u;
            let word = k0 / 16u + q;
            var pw = 0x55555555u;
            if (o0 + oo < p.out && word < p.k16) { pw = w[(p.wrow0 + o0 + oo) * p.k16 + word]; }
            for (var f4 = 0u; f4 < 4u; f4++) {
                let x = pw >> (8u * f4);
                c_t[oo * LD4 + q * 4u + f4] = vec4<f32>(vec4<i32>(i32(x & 3u), i32((x >> 2u) & 3u),
                    i32((x >> 4u) & 3u), i32((x >> 6u) & 3u)) - vec4<i32>(1));
            }
        }
        workgroupBarrier();
        for (var o = 0u; o < OS; o++) {
            let gv = g_t[o * LD4 + lid.y];
            let cv = c_t[o * LD4 + lid.x];
            acc0 += gv.x * cv;
            acc1 += gv.y * cv;
            acc2 += gv.z * cv;
            acc3 += gv.w * cv;
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let n = n0 + lid.y * 4u + i;
        if (n >= p.n) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let k = k0 + lid.x * 4u + j;
            if (k >= p.k) { continue; }
            var v = accs[i][j] / p.weight_scale;
            if (ACC) { v = dx[n * p.k + k] + v; }
            dx[n * p.k + k] = v;
        }
    }
}
