// Embedding-table gradient: dE[v, c] = sum of dy[n, c] over the positions n with ids[n] == v.
// Reference: reference.py `embedding_backward`. Deterministic, no float atomics:
// the host builds a CSR of positions per vocab id (reference.token_csr; ids are known on
// the host), so each output element is one invocation summing its positions in increasing n,
// the order NumPy's np.add.at uses: bit-identical to the reference.
//   row_ptr i32 (V+1,), pos i32 (N,), dy f32 (N, D) -> dE f32 (V, D) (rows of unseen ids = 0).
struct Params { total: u32, d: u32 }

@group(0) @binding(0) var<storage, read> row_ptr: array<i32>;
@group(0) @binding(1) var<storage, read> pos: array<i32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> de: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) { return; }
    let v = i / p.d;
    let c = i - v * p.d;
    var s = 0.0;
    for (var j = row_ptr[v]; j < row_ptr[v + 1u]; j++) {
        s += dy[u32(pos[j]) * p.d + c];
    }
    de[i] = s;
}
