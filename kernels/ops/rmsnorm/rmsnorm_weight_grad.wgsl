// Weight gradient of RMSNorm y = w * x * rstd: dw[c] = sum_n (dy[n,c] * x[n,c]) * rstd[n].
// Reference: reference.py `rmsnorm_weight_grad`. Deterministic two-pass sum
// (no atomics): `partial` sums rows [chunk*ROWS, (chunk+1)*ROWS) of one column in row order
// (one invocation per (chunk, column): consecutive invocations read consecutive columns);
// `finish` sums the chunks of a column in chunk order. The order differs from NumPy's pairwise
// sum, so results agree to fp32 rounding, not bit for bit.
struct Params { n: u32, c: u32, chunks: u32 }

const ROWS: u32 = 64u;

@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rstd: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;   // (chunks, C)
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.chunks * p.c) { return; }
    let chunk = i / p.c;
    let col = i - chunk * p.c;
    let r1 = min(p.n, (chunk + 1u) * ROWS);
    var s = 0.0;
    for (var r = chunk * ROWS; r < r1; r++) {
        s += (dy[r * p.c + col] * x[r * p.c + col]) * rstd[r];
    }
    part[i] = s;
}
