"""GPU launcher of the dense matmul (matmul.wgsl main; split-K slabs + reduce for skinny
outputs) for GpuBackend; semantics: reference.py beside this file. A host-resident table as b
streams through lm_head/host_table.py."""
from __future__ import annotations

import numpy as np

from bitswarm.kernels.device import Tensor, grid_for
from bitswarm.kernels.ops.check import check
from bitswarm.kernels.ops.lm_head.host_table import HostTable, matmul_host_table

F32 = np.float32
_MATMUL_MIN_WGS = 256     # split-K target: workgroups to keep a big GPU busy
_MATMUL_MIN_KCHUNK = 256  # split-K: at least this much of K per workgroup
SKINNY_R = 16             # skinny_*.wgsl: at most this many rank columns (LoRA r <= 16)
_SKINNY_MIN_WGS = 512     # skinny_cols split over the token axis: workgroups to aim for
_SKINNY_MIN_KCHUNK = 64   # ... each summing at least this many tokens
# matmul.wgsl main8 (128 x 128 tiles) from this many of them; below, main's 64 x 64 tiles.
# On an H200 (benchmarks/results/kernels-h200-issue11-lmhead-*.json) main8 ran the lm_head's
# logits chunk (2048 x 8192, K 2560; 1,024 tiles) from f32 rows in 4.33 ms vs main's 5.29, but
# its gradient rows (2048 x 2560, K 8192: 320 tiles, a second wave a fifth full) in 6.73 vs
# 5.83, and at 512 tokens (80 tiles) 3.32 vs 1.99: the lm_head's gradient stays on main
# (lm_head/gpu.py). 512: the 16 x 128 logits (1,024) take main8, the 4 x 128 ones (256) not.
# Both edges at least MATMUL_T128_EDGE too: a decode step's logits (M = 1, V / 128 tiles) would
# waste 127 of main8's 128 rows (main's 63 of 64), twice main's FMAs for the same table read.
MATMUL_T128_MIN = 512
MATMUL_T128_EDGE = 512
_MAIN8_WG_BYTES = 16896   # main8's workgroup memory (2 x 16 x 33 vec4: sized for KS8 = 16)
MATMUL_KS8 = 16           # main8's k per step (8 or 16; GpuBackend.matmul_ks8)
MATMUL_F16_PAIRS = True   # f16 b tiles loaded a word (two elements) at a time where they can be


def matmul_tile(be, M: int, N: int) -> int:
    """Output tile edge of the lm_head's logits matmul (64: matmul.wgsl main, 128: main8; the
    same sums in the same order, so the same bits): the forced `be.matmul_tile`, else 128 when
    its tiles alone fill a big GPU (at least MATMUL_T128_MIN of them, M and N at least
    MATMUL_T128_EDGE) and the device has the workgroup memory (16,896 bytes: an H200 has 48
    KiB, lavapipe 32 KiB). The general `matmul` stays on main unless forced: its other shapes
    (evaluation and generation logits, pretraining's weight gradients) were not measured."""
    forced = be.matmul_tile
    if forced is not None:
        check(forced in (64, 128), f"matmul_tile must be 64 or 128, got {forced}")
        return int(forced)
    wg = int(be.ctx.limits.get("max-compute-workgroup-storage-size", 16384))
    return 128 if (-(-M // 128) * -(-N // 128) >= MATMUL_T128_MIN
                   and min(M, N) >= MATMUL_T128_EDGE and wg >= _MAIN8_WG_BYTES) else 64


def launch_tiled(be, bufs, M: int, N: int, params: dict, consts: dict, splits: int = 1,
                 tile: int | None = None) -> None:
    """One matmul.wgsl launch of the tiled product over `bufs` (a, b, c) on the tile
    matmul_tile picks: the grid and entry of that tile; B_PAIRS where b is float16 with an even
    element offset and an even row length (every word two neighbours of one row) and
    `be.matmul_f16_pairs`; main8's KS8 from `be.matmul_ks8`. All give the same bits. `tile`:
    the edge to use unless `be.matmul_tile` forces one (else matmul_tile's choice)."""
    t = matmul_tile(be, M, N) if tile is None or be.matmul_tile is not None else tile
    row = params["k"] if consts.get("TRANS_B") else params["n"]
    pairs = bool(consts.get("B_F16")) and be.matmul_f16_pairs and params["b_off"] % 2 == 0 \
        and row % 2 == 0
    consts = {**consts, "B_PAIRS": int(pairs)}
    if t == 128:
        check(be.matmul_ks8 in (8, 16), f"matmul_ks8 must be 8 or 16, got {be.matmul_ks8}")
        consts["KS8"] = be.matmul_ks8
    be._launch("matmul", bufs, (-(-N // t), -(-M // t), splits), params,
               name="main8" if t == 128 else None, constants=consts)


def matmul(be, a: Tensor, b: Tensor, *, trans_a: bool = False, trans_b: bool = False,
           alpha: float = 1.0, acc: Tensor | None = None) -> Tensor:
    """alpha * op(a) @ op(b) (+ acc): a f32, b f32 or f16 (a table) -> f32 (M, N)."""
    check(len(a.shape) == 2 and len(b.shape) == 2, f"matmul needs 2-D, got {a.shape} {b.shape}")
    if isinstance(b, HostTable):
        return matmul_host_table(be, a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, acc=acc)
    M, K = a.shape[::-1] if trans_a else a.shape
    K2, N = b.shape[::-1] if trans_b else b.shape
    check(K == K2, f"matmul inner dims differ: op(a) {(M, K)} op(b) {(K2, N)}")
    check(a.dtype == "float32" and b.dtype in ("float32", "float16"),
           f"matmul: a must be float32 and b float32 or float16, got {a.dtype} {b.dtype}")
    if acc is not None:
        check(acc.shape == (M, N), f"matmul: acc {acc.shape} != {(M, N)}")
    if b.dtype == "float32" and min(M, N, K) <= SKINNY_R:
        c = _skinny(be, a, b, M, K, N, trans_a, trans_b, alpha, acc)
        if c is not None:
            return c
    c = be._new((M, N))
    if acc is not None:
        be.ctx.copy(acc, c)
    tiles = -(-N // 64) * -(-M // 64)
    consts = {"TRANS_A": int(trans_a), "TRANS_B": int(trans_b), "ACC": int(acc is not None),
              "B_F16": int(b.dtype == "float16")}
    # Skinny outputs (LoRA's r columns, A/B gradients) give few tiles: split K so the GPU
    # has >= ~256 workgroups, each summing >= 256 of K, then reduce the slabs in order.
    splits = min(-(-_MATMUL_MIN_WGS // tiles), K // _MATMUL_MIN_KCHUNK)
    if splits >= 2 and splits * M * N * 4 <= be.ctx.max_binding:
        kchunk = (-(-K // splits) + 15) // 16 * 16
        splits = -(-K // kchunk)
        part = be._new((splits, M, N))
        launch_tiled(be, [a, b, part], M, N,
                     dict(m=M, n=N, k=K, alpha=F32(alpha), kchunk=kchunk, b_off=0),
                     {**consts, "ACC": 0, "SPLIT": 1}, splits, tile=64)
        be._launch("matmul", [part, c], be._ew_grid(M * N),
                   dict(total=M * N, splits=splits, alpha=F32(alpha)), name="reduce",
                   constants={"ACC": consts["ACC"]})
        return c
    launch_tiled(be, [a, b, c], M, N, dict(m=M, n=N, k=K, alpha=F32(alpha), kchunk=K, b_off=0),
                 consts, tile=64)
    return c


def widen(be, w: Tensor, off: int, rows: int, cols: int, out: Tensor | None = None) -> Tensor:
    """float16 table elements off .. off + rows * cols -> float32 (rows, cols) (into `out`
    when given, a float32 tensor of at least that many elements): matmul.wgsl `widen`."""
    check(w.dtype == "float16", f"widen: needs a float16 table, got {w}")
    total = rows * cols
    c = out if out is not None else be._new((rows, cols))
    be._launch("matmul", [w, c], be._ew_grid(total), dict(total=total, off=off), name="widen")
    return c


def _skinny(be, a: Tensor, b: Tensor, M: int, K: int, N: int, trans_a: bool, trans_b: bool,
            alpha: float, acc: Tensor | None) -> Tensor | None:
    """LoRA's rank-r shapes on the skinny kernels, or None for shapes they do not take (those
    run tiled): h = x A^T (not trans_a, trans_b, N <= 16, K % 4 == 0) on skinny_rows; dB = dy^T h
    (trans_a, b (K, N), N <= 16, M % 4 == 0) on skinny_cols; y += s h B^T and dx += dh A (not
    trans_a, K <= 16) on skinny_update. Chosen per product by GPU time on an H200 at 2048 tokens
    (2B-4T D -> I, ms skinny / tiled): h 0.068 / 0.108, y += 0.173 / 0.280, dB 0.202 / 0.218,
    dx += 0.100 / 0.215; dh = dy B (0.725 / 0.253) and dA = dh^T x (0.113 / 0.098) stay tiled.
    `be.matmul_skinny = False` turns them off (A/B runs)."""
    if not be.matmul_skinny:
        return None
    F = F32(alpha)
    if not trans_a and trans_b and N <= SKINNY_R and acc is None and K % 4 == 0:
        c = be._new((M, N))
        be._launch("matmul", [a, b, c], grid_for(-(-M // 8)), dict(m=M, k=K, alpha=F),
                   name="rows", constants={"R": N})
        return c
    if trans_a and not trans_b and acc is None and N <= SKINNY_R and M % 4 == 0:
        wx = -(-M // 1024)                  # 256 invocations x 4 columns
        splits = max(1, min(-(-_SKINNY_MIN_WGS // wx), K // _SKINNY_MIN_KCHUNK))
        kchunk = -(-K // splits)
        splits = -(-K // kchunk)
        if splits * M * N * 4 > be.ctx.max_binding:
            return None
        part = be._new((splits, M, N))
        be._launch("matmul", [a, b, part], (wx, splits, 1), dict(m=M, k=K, kchunk=kchunk),
                   name="cols", constants={"R": N})
        c = be._new((M, N))
        be._launch("matmul", [part, c], be._ew_grid(M * N), dict(m=M, splits=splits, alpha=F),
                   name="cols_reduce", constants={"R": N})
        return c
    if not trans_a and K <= SKINNY_R:
        c = be._new((M, N))
        be._launch("matmul", [a, b, be._dummy() if acc is None else acc, c],
                   be._ew_grid(M * N), dict(m=M, n=N, alpha=F), name="update",
                   constants={"TRANS_B": int(trans_b), "ACC": int(acc is not None), "KR": K})
        return c
    return None
