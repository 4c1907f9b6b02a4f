"""The mask generator: a ChaCha20 keystream (RFC 8439; `cryptography`'s OpenSSL binding) read
as little-endian uint32. A cryptographic PRG, unlike NumPy's PCG64/Philox, whose state can be
recovered from outputs: a mask must look uniform to a peer who sees other masks too."""
from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32


def prg_uint32(seed: bytes, n: int) -> np.ndarray:
    """n uint32 values, uniform mod 2^32, determined by the 32-byte `seed` (shape (n,),
    dtype uint32): ChaCha20 with key = seed, a zero 16-byte counter+nonce, over n x 4 zero
    bytes. Raises ValueError for a seed that is not 32 bytes or n < 0."""
    if type(seed) is not bytes or len(seed) != SEED_BYTES:
        raise ValueError("a PRG seed is 32 bytes")
    if type(n) is not int or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype="<u4").astype(np.uint32, copy=False)
