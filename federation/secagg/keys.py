"""Key agreement, key derivation and authenticated encryption of a secure round.

Each member makes two fresh X25519 key pairs per round (Bonawitz et al. 2017, section 4):
`c` encrypts the Shamir shares sent to it, `s` derives the pairwise masks. They are separate
so that revealing a dropped member's `s` private key (to remove its masks) never decrypts the
shares others sent to it.

Sources: X25519, RFC 7748; HKDF-SHA256, RFC 5869; ChaCha20-Poly1305, RFC 8439; all through
the `cryptography` package (pyca).
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_NONCE = bytes(12)     # every AEAD key encrypts exactly one message (derive_key binds it)
_RAW = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


class SecAggCryptoError(ValueError):
    """A key, ciphertext or share failed to parse or authenticate; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def public_bytes(sk: X25519PrivateKey) -> bytes:
    """The 32-byte raw X25519 public key of `sk`."""
    return sk.public_key().public_bytes(**_RAW)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    """The 32-byte raw X25519 private key (what is Shamir-shared)."""
    return sk.private_bytes(encoding=serialization.Encoding.Raw,
                            format=serialization.PrivateFormat.Raw,
                            encryption_algorithm=serialization.NoEncryption())


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """X25519 private key from 32 raw bytes. Raises SecAggCryptoError."""
    if type(raw) is not bytes or len(raw) != KEY_BYTES:
        raise SecAggCryptoError("an X25519 private key is 32 bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def x25519_shared(sk: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The 32-byte X25519 shared secret of our `sk` and a peer's raw public key.

    Raises SecAggCryptoError for a malformed key or an all-zero result (a small-order point:
    RFC 7748 section 6.1 says to check it)."""
    if type(peer_public) is not bytes or len(peer_public) != KEY_BYTES:
        raise SecAggCryptoError("an X25519 public key is 32 bytes")
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:                  # cryptography refuses an all-zero secret
        raise SecAggCryptoError(f"X25519 agreement failed: {e}") from None
    if shared == bytes(KEY_BYTES):
        raise SecAggCryptoError("X25519 agreement gave the all-zero secret")
    return shared


def derive_key(shared: bytes, purpose: bytes, context: bytes) -> bytes:
    """32 bytes of HKDF-SHA256(shared, salt=None, info=b"bitswarm-secagg/1\\0" + purpose +
    b"\\0" + context). `context` binds swarm, round, base adapter and the two peers (see
    masking.pairwise_seed, `share_key`), so no seed or key repeats across rounds or forks."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"bitswarm-secagg/1\0" + purpose + b"\0" + context).derive(shared)


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 under a one-message key (zero nonce): ciphertext + 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, aad)


def aead_decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Inverse of aead_encrypt. Raises SecAggCryptoError when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, ciphertext, aad)
    except InvalidTag:
        raise SecAggCryptoError("share ciphertext does not authenticate") from None


@dataclass
class RoundKeys:
    """One member's secrets of one round: c (encryption) and s (mask) X25519 private keys and
    b, the 32-byte seed of its self mask. Made fresh per round (`RoundKeys.fresh`), never
    stored."""

    c: X25519PrivateKey
    s: X25519PrivateKey
    b: bytes

    @classmethod
    def fresh(cls) -> "RoundKeys":
        import secrets
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate(),
                   secrets.token_bytes(KEY_BYTES))

    @property
    def c_public(self) -> bytes:
        return public_bytes(self.c)

    @property
    def s_public(self) -> bytes:
        return public_bytes(self.s)
