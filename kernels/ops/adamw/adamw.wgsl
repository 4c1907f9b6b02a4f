// AdamW step in place (torch.optim.AdamW semantics). Reference: reference.py `adamw_`.
// p, g, m, v f32 (n,). Scalars are precomputed on the host in float32 exactly as the reference
// does: decay = 1 - lr*wd, bc1 = 1 - beta1^step, bc2 = 1 - beta2^step.
struct Params { total: u32, decay: f32, beta1: f32, omb1: f32, beta2: f32, omb2: f32,
                bc1: f32, bc2: f32, lr: f32, eps: f32 }

@group(0) @binding(0) var<storage, read_write> prm: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m1: array<f32>;
@group(0) @binding(3) var<storage, read_write> m2: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

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
    prm[i] = w - p.lr * (m / p.bc1) / (sqrt(v / p.bc2) + p.eps);
}
