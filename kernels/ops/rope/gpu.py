"""GPU launchers of RoPE for GpuBackend: rope.wgsl (B sequences of T tokens; sign -1 is the
inverse, the backward) and rope_at.wgsl (M tokens of one sequence from position pos, for
decoding); semantics: reference.py beside this file. cos/sin tables come from the backend's
RopeTables (uploaded float32, grown on demand)."""
from __future__ import annotations

from bitswarm.kernels.device import Tensor


def rope(be, x: Tensor, T: int, H: int, hd: int, theta: float, inverse: bool = False) -> Tensor:
    """x f32 (N, H*hd), N = B*T -> rotated copy. Raises ValueError for incompatible shapes."""
    N = x.shape[0]
    if not (x.shape == (N, H * hd) and hd % 2 == 0 and T > 0 and N % T == 0):
        raise ValueError(f"rope: x {x.shape} incompatible with T={T} H={H} hd={hd}")
    cos, sin = be._rope.get(T, hd, theta)
    y = be._new(x.shape)
    total = N * H * (hd // 2)
    be._launch("rope", [x, cos, sin, y], be._ew_grid(total),
               dict(total=total, t=T, h=H, hd=hd, sign=-1.0 if inverse else 1.0))
    return y


def rope_at(be, x: Tensor, pos: int, H: int, hd: int, theta: float) -> Tensor:
    """x f32 (M, H*hd) at positions pos .. pos+M-1 -> rotated copy (reference.rope_at)."""
    M = x.shape[0]
    if x.shape != (M, H * hd) or hd % 2 or pos < 0:
        raise ValueError(f"rope_at: x {x.shape} incompatible with H={H} hd={hd} pos={pos}")
    cos, sin = be._rope.get(pos + M, hd, theta, grow=True)
    y = be._new(x.shape)
    total = M * H * (hd // 2)
    be._launch("rope_at", [x, cos, sin, y], be._ew_grid(total),
               dict(total=total, pos=pos, h=H, hd=hd))
    return y
