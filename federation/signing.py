"""Ed25519 signatures verifiable from a peer ID alone.

An Ed25519 libp2p peer ID is an identity multihash of the public key (libp2p peer-ID spec),
so `verify` needs nothing but the signer's peer ID: no key exchange, no key registry.

Every signature covers `DOMAIN_TAG + data`. The same key also signs Noise handshakes
("noise-libp2p-static-key:") and pubsub messages ("libp2p-pubsub:"); the tag keeps a
bitswarm signature from ever being valid in those protocols and vice versa.
"""

from __future__ import annotations

import logging

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.peer.id import ID

log = logging.getLogger("bitswarm.federation.signing")

DOMAIN_TAG = b"bitswarm-sig/v1\x00"
SIGNATURE_BYTES = 64  # Ed25519 (RFC 8032)


def sign(key_pair: KeyPair, data: bytes) -> bytes:
    """Sign `data` (bytes) with `key_pair`'s Ed25519 key; returns the 64-byte signature.

    Raises:
        ValueError: the key pair is not Ed25519.
    """
    if key_pair.private_key.get_type() != KeyType.Ed25519:
        raise ValueError(f"sign needs an Ed25519 key, got {key_pair.private_key.get_type().name}")
    return key_pair.private_key.sign(DOMAIN_TAG + bytes(data))


def verify(peer_id: str, data: bytes, signature: bytes) -> bool:
    """True iff `signature` is the Ed25519 signature by `peer_id` (base58) over `data`.

    Never raises: a malformed or non-Ed25519 peer ID, or a malformed signature, gives False.
    """
    try:
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_BYTES:
            return False
        public_key = ID.from_base58(peer_id).extract_public_key()
        if public_key is None or public_key.get_type() != KeyType.Ed25519:
            return False
        # `cryptography` (OpenSSL) rejects non-canonical encodings per RFC 8032.
        Ed25519PublicKey.from_public_bytes(public_key.to_bytes()).verify(
            bytes(signature), DOMAIN_TAG + bytes(data)
        )
        return True
    except InvalidSignature:
        return False
    except Exception as e:  # garbage base58 / multihash / key bytes
        log.debug("verify: malformed input for peer %r: %s", peer_id, e)
        return False
