// AdamW step in place (torch.optim.AdamW semantics). Reference: reference.py `adamw_`.
// p, g, m, v f32 (n,). Scalars are precomputed on the host in float32 exactly as the reference
// does: decay = 1 - lr*wd, bc = (1 - beta1^step, 1 - beta2^step). The bias corrections, the
// only scalars that change every step, come in a storage buffer of their own: with them in the
// uniform params every AdamW dispatch of every step had new params and so a new bind group.
struct Params { total: u32, decay: f32, beta1: f32, omb1: f32, beta2: f32, omb2: f32,
                lr: f32, eps: f32 }

@group(0) @binding(0) var<storage, read_write> prm: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m1: array<f32>;
@group(0) @binding(3) var<storage, read_write> m2: array<f32>;
@group(0) @binding(4) var<storage, read> bc: array<f32>;   // (bc1, bc2)
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    let g = grad[i];
    let w = prm[i] * p.decay;
    let m = m1[i] * p.beta1 + p.omb1 * g;
    let v = m2[i] * p.beta2 + (p.omb2 * g) * g;
    m1[i] = m;
    m2[i] = v;
    prm[i] = w - p.lr * (m / bc[0]) / (sqrt(v / bc[1]) + p.eps);
}
