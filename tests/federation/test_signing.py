"""Ed25519 signatures verifiable from a peer ID, with a domain tag."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bitswarm.federation.identity import load_or_create_identity, peer_id_of
from bitswarm.federation.signing import sign, verify


# ---- signing -------------------------------------------------------------------------------


def test_sign_verify_roundtrip_and_tamper(tmp_path: Path) -> None:
    kp = load_or_create_identity(tmp_path / "a")
    other = peer_id_of(load_or_create_identity(tmp_path / "b"))
    me = peer_id_of(kp)
    data = b"manifest: round 3, sha256 " + hashlib.sha256(b"x").digest()
    sig = sign(kp, data)
    assert len(sig) == 64
    assert verify(me, data, sig)
    assert not verify(me, data + b"!", sig)  # tampered data
    assert not verify(me, data, sig[:-1] + bytes([sig[-1] ^ 1]))  # tampered signature
    assert not verify(other, data, sig)  # wrong signer
    assert not verify(me, data, sig[:32])  # truncated
    assert not verify("not-base58-0OIl", data, sig)  # malformed peer ids: False, not raise
    assert not verify("", data, sig)
    assert not verify("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", data, sig)  # sha256 peer id: no key inside
    # Domain separation: a raw Ed25519 signature over the same bytes is not accepted.
    assert not verify(me, data, kp.private_key.sign(data))
