// Absmean ternarization of a latent fp32 projection for quantization-aware training (BitNet
// b1.58, arXiv:2402.17764, eq. 1-3; transformers' WeightQuant). Reference:
// reference.py `ternarize`.
//   absmean: w f32 (OUT*K) -> scales[slot] = 1 / max(mean|w|, 1e-5). ONE workgroup of 256:
//            strided partial sums then a fixed tree, so the result is deterministic; fp32 sum
//            and WGSL's 2.5-ulp division make it differ from NumPy's float64 mean by a few ulp.
//   pack:    w f32 (OUT, K), scales[slot] -> codes (OUT, K) 2-bit packed exactly as
//            GpuBackend's ternary layout (gpu.py pack_codes_2bit): 16 per u32,
//            row stride K16 = ceil(K/16) words, field i of word j = element 16j+i stored as
//            code+1, padding fields 1 (zero weight); code = clamp(round(w * s), -1, 1), round
//            half-to-even: exact given s. One invocation per packed word.
struct Params { out: u32, k: u32, k16: u32, slot: u32 }

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> scales: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn absmean(@builtin(local_invocation_index) tid: u32) {
    let total = p.out * p.k;
    var s = 0.0;
    for (var i = tid; i < total; i += WG) { s += abs(w[i]); }
    red[tid] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h = h >> 1u) {
        if (tid < h) { red[tid] = red[tid] + red[tid + h]; }
        workgroupBarrier();
    }
    if (tid == 0u) {
        let mean = red[0] / f32(total);
        scales[p.slot] = 1.0 / max(mean, 1e-5);
    }
}
