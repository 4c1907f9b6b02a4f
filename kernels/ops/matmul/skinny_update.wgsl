// Low-rank update: c (M, N) = alpha * a (M, KR) @ op(b) (KR, N) (+ acc), KR <= 16.
// Reference: reference.py `matmul` (trans_a false). op(b): b stored (N, KR) with TRANS_B (LoRA's
// y += s h B^T), else (KR, N) (dx += dh A). One invocation per output; `acc` is read from its
// own binding (no copy into c first), so the pass is one read of acc and one write of c.
override TRANS_B: bool = false;
override ACC: bool = false;
override KR: u32 = 8u;

struct Params { m: u32, n: u32, alpha: f32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> acc: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.m * p.n) { return; }
    let m = i / p.n;
    let n = i % p.n;
    var s = 0.0;
    for (var j = 0u; j < KR; j++) {
        var bv: f32;
        if (TRANS_B) { bv = b[n * KR + j]; } else { bv = b[j * p.n + n]; }
        s = fma(a[m * KR + j], bv, s);
    }
    var v = s * p.alpha;
    if (ACC) { v = acc[i] + v; }
    c[i] = v;
}
