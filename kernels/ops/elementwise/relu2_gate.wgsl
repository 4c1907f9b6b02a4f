// Gated squared ReLU (BitNet MLP): h = relu(g)^2 * u, and its backward
// (dg, du) = (2*relu(g)*u*dh, relu(g)^2*dh). Reference: reference.py `relu2_gate*`.
// All tensors f32 (N, I), one invocation per element; products in the reference's order.
struct Params { total: u32 }

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    let r = max(g[i], 0.0);
    h[i] = (r * r) * u[i];
}

// backward bindings: dh, g, u, dg (out), du (out), params
@group(0) @binding(0) var<storage, read> b_dh: array<f32>;
@group(0) @binding(1) var<storage, read> b_g: array<f32>;
@group(0) @binding(2) var<storage, read> b_u: array<f32>;
@group(0) @binding(3) var<storage, read_write> b_dg: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_du: array<f32>;
@group(0) @binding(5) var<uniform> bp: Params;

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= bp.total) { return; }
    let r = max(b_g[i], 0.0);
    let dh = b_dh[i];
    b_dg[i] = ((2.0 * r) * b_u[i]) * dh;
    b_du[i] = (r * r) * dh;
}
