"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS'17): the cryptographic core.

- `keys`: X25519 key agreement (RFC 7748), HKDF-SHA256 (RFC 5869) seeds bound to the swarm,
  round and base adapter, ChaCha20-Poly1305 (RFC 8439) for the encrypted shares.
- `prg`: the mask generator, ChaCha20 keystream as uint32 (a cryptographic PRG).
- `quantize`: fixed-point encoding of a bounded update as integers mod 2^32.
- `shamir`: Shamir's t-of-n secret sharing (Shamir 1979) over GF(2^521 - 1).
- `masking`: the double mask of one member's input (pairwise + self mask) and its removal.
- `messages`: the signed gossip messages of a secure round (keys, shares, unmask) and the
  masked-input payload.

May import only `bitswarm` and `federation` (the rooms: docs/architecture.md).
"""
from .keys import RoundKeys, aead_decrypt, aead_encrypt, derive_key, public_bytes, x25519_shared
from .masking import apply_masks, pairwise_seed, unmask_sum
from .prg import prg_uint32
from .quantize import Quantizer
from .shamir import PRIME, Share, reconstruct, split

__all__ = ["RoundKeys", "aead_decrypt", "aead_encrypt", "derive_key", "public_bytes",
           "x25519_shared", "apply_masks", "pairwise_seed", "unmask_sum", "prg_uint32",
           "Quantizer", "PRIME", "Share", "reconstruct", "split"]
