"""Wire format of a secure-aggregation round (docs/protocol.md, "Secure aggregation").

Gossip (signed, small):  b"BSSA" | u8 1 | msgpack [body: bin, signature: bin]
    body = msgpack map, keys sorted. Common fields: kind ("keys" | "shares" | "consistency" |
    "unmask"), swarm, round, base_adapter (32 bytes, the digest of G_round), rule (the swarm's
    rule name, "+secagg" included), sender (base58 peer ID, the signer), issued_at (unix s).
    keys:   c_public, s_public (32-byte X25519 keys), tokens (the member's FedAvg weight).
    shares: cohort (the sorted peer IDs whose keys the sender shared for, itself included),
            threshold (t of its Shamir sharing), commit_b (SHA-256 commitment to its self-mask
            seed), ciphertexts (sorted [recipient, ChaCha20-Poly1305 ciphertext] per other
            cohort member).
    consistency: cohort_sha256 (SHA-256 of the masking cohort, `cohort_digest`), survivors
            (sorted peer IDs whose masked inputs for that cohort the sender holds): the
            sender's one vote of the round on who survived (Bonawitz et al.'s consistency
            check).
    unmask: cohort_sha256, survivors (the survivor set that gathered t votes; sorted
            peer IDs whose masked inputs the sender sums), shares (sorted [owner, x, y]: the
            sender's Shamir share of the self-mask seed b of each survivor, of the s private
            key of each dropped member).
The signature is Ed25519 by `sender` over b"bitswarm-sig/v1\\0" + header + body (signing.py).

Masked input payload (served by content hash, announced by an UpdateManifest with codec
MASKED_CODEC): b"BSMI" | u8 1 | msgpack [cohort: list of peer IDs, y: bin (n x uint32 LE)].

Share plaintext (inside a ciphertext): msgpack [sender, recipient, x, b_y: bin 66, s_y: bin 66].

Errors: every malformed input raises wire.WireError(reason); nothing else escapes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
import numpy as np

from bitswarm.federation import signing
from bitswarm.federation.wire import (MAX_ROUND, MAX_TIME, MAX_TOKENS, SHA256_BYTES, WireError,
                                      _check_int, _check_str, _unpack, _unpack_framed)

from .shamir import ELEMENT_BYTES, MAX_SHARES

SECAGG_MAGIC = b"BSSA"
MASKED_MAGIC = b"BSMI"
SECAGG_VERSION = 1
MASKED_CODEC = "secagg-masked/1"
_HEADER = SECAGG_MAGIC + bytes([SECAGG_VERSION])
_MASKED_HEADER = MASKED_MAGIC + bytes([SECAGG_VERSION])
MAX_COHORT = 256
MAX_SECAGG_BYTES = 192 * 1024            # below the transport's 256 KiB gossip limit
MAX_CIPHERTEXT_BYTES = 512
KINDS = ("keys", "shares", "consistency", "unmask")
_COMMON = ("base_adapter", "issued_at", "kind", "round", "rule", "sender", "swarm")
_EXTRA = {"keys": ("c_public", "s_public", "tokens"),
          "shares": ("ciphertexts", "cohort", "commit_b", "threshold"),
          "consistency": ("cohort_sha256", "survivors"),
          "unmask": ("cohort_sha256", "shares", "survivors")}


@dataclass(frozen=True)
class SecAggMessage:
    """A decoded, verified secure-aggregation gossip message (fields: the module docstring;
    `fields` holds the kind's own fields, already checked). data: the signed bytes."""

    kind: str
    swarm: str
    round: int
    base_adapter: bytes
    rule: str
    sender: str
    issued_at: int
    fields: dict
    data: bytes


def cohort_digest(cohort: list[str]) -> bytes:
    """SHA-256 naming a cohort: its sorted peer IDs, NUL-separated."""
    return hashlib.sha256(b"bitswarm-secagg-cohort\0" + b"\0".join(
        p.encode() for p in sorted(cohort))).digest()


def encode_message(*, kind: str, swarm: str, round: int, base_adapter: bytes, rule: str,
                   sender: str, issued_at: int, key_pair, **extra) -> bytes:
    """Sign a gossip message; `extra` are the kind's fields. Raises WireError on bad fields
    (the checks a receiver applies)."""
    body = {"kind": kind, "swarm": swarm, "round": round, "base_adapter": bytes(base_adapter),
            "rule": rule, "sender": sender, "issued_at": int(issued_at), **extra}
    _check(body)
    packed = msgpack.packb(dict(sorted(body.items())), use_bin_type=True)
    data = _HEADER + msgpack.packb([packed, signing.sign(key_pair, _HEADER + packed)],
                                   use_bin_type=True)
    if len(data) > MAX_SECAGG_BYTES:
        raise WireError(f"secure-aggregation message is {len(data)} bytes > {MAX_SECAGG_BYTES}")
    return data


def decode_message(data: bytes) -> SecAggMessage:
    """Parse, check and verify (signature by `sender`) a gossip message. Raises WireError."""
    outer = _unpack_framed(data, _HEADER, MAX_SECAGG_BYTES, "secure-aggregation message")
    if not (isinstance(outer, list) and len(outer) == 2 and all(type(x) is bytes for x in outer)):
        raise WireError("secure-aggregation frame must be [body: bin, signature: bin]")
    body = _unpack(outer[0], MAX_SECAGG_BYTES, "secure-aggregation body")
    if not isinstance(body, dict):
        raise WireError("secure-aggregation body is not a map")
    _check(body)
    if not signing.verify(body["sender"], _HEADER + outer[0], outer[1]):
        raise WireError(f"bad secure-aggregation signature for sender {body['sender']}",
                        round=body["round"])
    extra = {k: body[k] for k in _EXTRA[body["kind"]]}
    return SecAggMessage(kind=body["kind"], swarm=body["swarm"], round=body["round"],
                         base_adapter=body["base_adapter"], rule=body["rule"],
                         sender=body["sender"], issued_at=body["issued_at"], fields=extra,
                         data=bytes(data))


def encode_masked(cohort: list[str], y: np.ndarray) -> bytes:
    """The masked-input payload of `y` (uint32 (n,)) masked for `cohort` (sorted peer IDs)."""
    _check_peers("cohort", cohort, 1)
    return _MASKED_HEADER + msgpack.packb(
        [list(cohort), np.asarray(y, "<u4").tobytes()], use_bin_type=True)


def decode_masked(data: bytes, n: int) -> tuple[list[str], np.ndarray]:
    """(cohort, y uint32 (n,)) of a masked-input payload. Raises WireError (wrong framing,
    cohort not sorted distinct peer IDs, y not n uint32)."""
    limit = 4 * n + MAX_COHORT * 160 + 64
    obj = _unpack_framed(data, _MASKED_HEADER, limit, "masked input")
    if not (isinstance(obj, list) and len(obj) == 2 and type(obj[1]) is bytes):
        raise WireError("masked input must be [cohort, y: bin]")
    _check_peers("cohort", obj[0], 1)
    if len(obj[1]) != 4 * n:
        raise WireError(f"masked input holds {len(obj[1])} bytes, expected {4 * n}")
    return obj[0], np.frombuffer(obj[1], "<u4").astype(np.uint32)


def masked_bound(n: int) -> int:
    """Largest valid masked-input payload, bytes, for n values."""
    return 4 * n + MAX_COHORT * 160 + 64


def encode_share_plain(sender: str, recipient: str, x: int, b_y: bytes, s_y: bytes) -> bytes:
    return msgpack.packb([sender, recipient, x, b_y, s_y], use_bin_type=True)


def decode_share_plain(data: bytes) -> tuple[str, str, int, bytes, bytes]:
    """[sender, recipient, x, b_y, s_y] of a decrypted share. Raises WireError."""
    obj = _unpack(data, 1024, "share plaintext")
    if not (isinstance(obj, list) and len(obj) == 5):
        raise WireError("share plaintext must be [sender, recipient, x, b_y, s_y]")
    _check_str("share sender", obj[0])
    _check_str("share recipient", obj[1])
    _check_int("share index", obj[2], 1, MAX_SHARES)
    for v in obj[3:]:
        if type(v) is not bytes or len(v) != ELEMENT_BYTES:
            raise WireError(f"share values must be {ELEMENT_BYTES} bytes")
    return tuple(obj)


# --- checks --------------------------------------------------------------------------------

def _check_peers(name: str, peers, lo: int) -> None:
    if (not isinstance(peers, list) or not lo <= len(peers) <= MAX_COHORT
            or any(type(p) is not str or not 0 < len(p) <= 128 for p in peers)
            or peers != sorted(set(peers))):
        raise WireError(f"{name} must be {lo}..{MAX_COHORT} sorted distinct peer IDs")


def _check_bytes(name: str, v, n: int) -> None:
    if type(v) is not bytes or len(v) != n:
        raise WireError(f"{name} must be {n} bytes")


def _check(b: dict) -> None:
    kind = b.get("kind")
    if kind not in KINDS:
        raise WireError(f"unknown secure-aggregation kind {str(kind)[:40]!r}")
    want = set(_COMMON) | set(_EXTRA[kind])
    if set(b) != want:
        raise WireError(f"secure-aggregation {kind} fields: missing {sorted(want - set(b))}, "
                        f"extra {sorted(map(str, set(b) - want))}"[:200])
    _check_str("swarm", b["swarm"])
    _check_int("round", b["round"], 0, MAX_ROUND)
    _check_bytes("base_adapter", b["base_adapter"], SHA256_BYTES)
    _check_str("rule", b["rule"])
    _check_str("sender", b["sender"])
    _check_int("issued_at", b["issued_at"], 0, MAX_TIME)
    if kind == "keys":
        _check_bytes("c_public", b["c_public"], 32)
        _check_bytes("s_public", b["s_public"], 32)
        _check_int("tokens", b["tokens"], 1, MAX_TOKENS)
    elif kind == "shares":
        _check_peers("cohort", b["cohort"], 1)
        if b["sender"] not in b["cohort"]:
            raise WireError("shares: the sender is not in its own cohort")
        _check_int("threshold", b["threshold"], 1, len(b["cohort"]))
        _check_bytes("commit_b", b["commit_b"], SHA256_BYTES)
        cts = b["ciphertexts"]
        if (not isinstance(cts, list) or len(cts) > MAX_COHORT
                or any(not (isinstance(e, list) and len(e) == 2 and type(e[0]) is str
                            and type(e[1]) is bytes and len(e[1]) <= MAX_CIPHERTEXT_BYTES)
                       for e in cts)):
            raise WireError("ciphertexts must be [recipient, bytes] pairs")
        recipients = [e[0] for e in cts]
        if recipients != sorted(set(recipients)) or not set(recipients) <= set(b["cohort"]) \
                or b["sender"] in recipients:
            raise WireError("ciphertexts must go to distinct other cohort members, sorted")
    elif kind == "consistency":
        _check_bytes("cohort_sha256", b["cohort_sha256"], SHA256_BYTES)
        _check_peers("survivors", b["survivors"], 1)
    else:
        _check_bytes("cohort_sha256", b["cohort_sha256"], SHA256_BYTES)
        _check_peers("survivors", b["survivors"], 1)
        sh = b["shares"]
        if (not isinstance(sh, list) or len(sh) > MAX_COHORT
                or any(not (isinstance(e, list) and len(e) == 3 and type(e[0]) is str
                            and type(e[1]) is int and 1 <= e[1] <= MAX_SHARES
                            and type(e[2]) is bytes and len(e[2]) == ELEMENT_BYTES)
                       for e in sh)):
            raise WireError("unmask shares must be [owner, x, y: 66 bytes] triples")
        owners = [e[0] for e in sh]
        if owners != sorted(set(owners)):
            raise WireError("unmask shares must have distinct owners, sorted")
