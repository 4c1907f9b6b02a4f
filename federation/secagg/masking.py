"""The double mask of Bonawitz et al. 2017 (section 4, "double-masking"), over uint32.

Member u with sorted cohort C sends
    y_u = q_u + PRG(b_u) + sum_{v in C, v > u} PRG(s_uv) - sum_{v in C, v < u} PRG(s_uv)
(mod 2^32; peers ordered by peer ID string). Summed over the survivors S, the pairwise masks
of pairs inside S cancel; what is left is each survivor's self mask PRG(b_u) (removed with b_u,
rebuilt from shares) and the pairwise masks between survivors and dropped members D = C \\ S
(removed with the dropped member's s private key, rebuilt from shares). A member's b and its
s key are never both revealed, so a late-arriving y of a "dropped" member stays masked.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .keys import derive_key, private_from_bytes, x25519_shared
from .prg import prg_uint32


def round_context(swarm: str, round: int, base_adapter: bytes) -> bytes:
    """The bytes every seed and key of a round is bound to (swarm, round, base adapter)."""
    return (swarm.encode() + b"\0" + round.to_bytes(8, "big") + bytes(base_adapter))


def pairwise_seed(s_private, peer_s_public: bytes, me: str, peer: str, context: bytes) -> bytes:
    """The 32-byte mask seed s_uv = HKDF(X25519(s_u, s_v), context, the two peer IDs sorted):
    the same for both members of the pair. Raises keys.SecAggCryptoError for a bad key."""
    lo, hi = sorted((me, peer))
    shared = x25519_shared(s_private, peer_s_public)
    return derive_key(shared, b"mask", context + lo.encode() + b"\0" + hi.encode())


def apply_masks(q: np.ndarray, me: str, self_seed: bytes, seeds: Mapping[str, bytes]) -> np.ndarray:
    """y = q + PRG(self_seed) + sum_{v > me} PRG(seeds[v]) - sum_{v < me} PRG(seeds[v]),
    uint32 (n,) from uint32 (n,). seeds: peer ID -> pairwise seed, every other cohort member."""
    n = q.shape[0]
    y = q.astype(np.uint32, copy=True)
    y += prg_uint32(self_seed, n)
    for v, seed in seeds.items():
        if v == me:
            raise ValueError("a member has no pairwise mask with itself")
        if v > me:
            y += prg_uint32(seed, n)
        else:
            y -= prg_uint32(seed, n)
    return y


def unmask_sum(masked: Mapping[str, np.ndarray], self_seeds: Mapping[str, bytes],
               dropped_keys: Mapping[str, bytes], s_publics: Mapping[str, bytes],
               context: bytes) -> np.ndarray:
    """The sum of the survivors' q (uint32 (n,)) from their masked y.

    masked: survivor -> y (uint32 (n,)); self_seeds: survivor -> its rebuilt b; dropped_keys:
    dropped member -> its rebuilt 32-byte s private key; s_publics: survivor -> its s public key.
    Raises ValueError when a survivor's seed is missing, keys.SecAggCryptoError for bad keys."""
    if set(self_seeds) != set(masked):
        raise ValueError("a self-mask seed per survivor is needed")
    it = iter(masked.values())
    total = next(it).astype(np.uint32, copy=True)
    for y in it:
        total += y
    n = total.shape[0]
    for u, b in self_seeds.items():
        total -= prg_uint32(b, n)
    for d, raw in dropped_keys.items():
        sk = private_from_bytes(raw)
        for u in masked:
            seed = pairwise_seed(sk, s_publics[u], d, u, context)
            # u added +PRG if d > u, -PRG if d < u: take it back.
            if d > u:
                total -= prg_uint32(seed, n)
            else:
                total += prg_uint32(seed, n)
    return total
