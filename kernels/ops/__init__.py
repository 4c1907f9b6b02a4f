"""The ops: one folder per op family, each holding its WGSL shader(s), its NumPy reference and
its GPU launcher (after llm.c's dev/cuda, one kernel per file with its CPU reference):

    kernels/ops/<family>/
        <name>.wgsl     the kernels (shipped as package data, loaded through importlib.resources)
        reference.py    the exact semantics in NumPy; CpuBackend runs it as it is
        gpu.py          the launcher: shapes checked, outputs allocated, kernels encoded with
                        named parameters (its functions become GpuBackend methods)
    tests/kernels/ops/test_<family>.py   GPU against reference on the same inputs

Families (op names as in `registry.OPS` and the `Backend` protocol):
    embedding    embedding, embedding_backward (+ token_csr, the host-side CSR of positions)
    rmsnorm      rmsnorm, rmsnorm_backward, rmsnorm_weight_grad
    bitlinear    the W1.58A8 family: quantize_act, bitlinear (+ split-K reduce, bitlinear_int),
                 bitlinear_group (main3), bitlinear_backward, ternarize_all, dequantize_act;
                 the tile / split heuristics and the 2-bit GPU packing (gpu.py), the
                 pretraining launchers (train_gpu.py), the quantizer constants (reference.py)
    matmul       matmul (dense; LoRA, lm_head, weight gradients)
    elementwise  add, relu2_gate, relu2_gate_backward
    rope         rope, rope_at, and RopeTables (the one cos/sin table cache)
    attention    attention, attention_backward, attention_decode, kv_append_
    lm_head      cross_entropy, lm_head_cross_entropy, and host-table streaming (host_table.py)
    adamw        adamw_

Adding a kernel: its .wgsl, reference function and launcher in its family's folder, one line in
registry.OPS, one method line in the `Backend` protocol, CpuBackend and GpuBackend
(kernels/backend.py, kernels/gpu_backend.py), and its test in test_<family>.py (the registry
test fails until every registered op has a reference, a loading shader and a test).
`precision.F32` is the references' float type (switched to float64 by the gradient checks).
"""
