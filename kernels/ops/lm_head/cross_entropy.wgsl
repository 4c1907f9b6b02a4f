// Softmax cross-entropy, forward and backward fused (llm.c crossentropy_softmax).
// Reference: reference.py `cross_entropy`. logits f32 (N, V), targets i32 (N,)
// (< 0 = padding) -> loss f32 (N,) nats, dlogits f32 (N, V) = (softmax - onehot) * grad_scale
// (zero rows for padding). One 256-invocation workgroup per row.
struct Params { rows: u32, v: u32, grad_scale: f32 }

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.v;
    var m = -0x1.fffffep+127f;   // -FLT_MAX, exact (Tint rejects a decimal literal that rounds to it)
    for (var i = tid; i < p.v; i += WG) { m = max(m, logits[base + i]); }
    red[tid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = max(red[tid], red[tid + s]); }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var se = 0.0;
    for (var i = tid; i < p.v; i += WG) { se += exp(logits[base + i] - mx); }
    red[tid] = se;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) { red[tid] = red[tid] + red[tid + s]; }
        workgroupBarrier();
    }
    let sum = red[0];
    let t = targets[row];
    let valid = t >= 0 && u32(t) < p.v;
    let scale = select(0.0, p.grad_scale, valid);
    for (var i = tid; i < p.v; i += WG) {
        var d = exp(logits[base + i] - mx) / sum;
        if (valid && i == u32(t)) { d -= 1.0; }
        dlogits[base + i] = d * scale;
    }
    if (tid == 0u) {
        var l = 0.0;
        if (valid) { l = (mx + log(sum)) - logits[base + u32(t)]; }
        loss[row] = l;
    }
}
