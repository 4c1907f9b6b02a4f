"""Round records: a node's signed decision of which updates form round r, and the adapter
they produce (protocol v2; docs/protocol.md, "Agreement").

    b"BSRR" | u8 version | msgpack [body: bin, signature: bin]

body = msgpack map (keys sorted): swarm, round, base_model, lora, rule (aggregation rule
name), base_adapter (32-byte SHA-256 of G_round), new_adapter (SHA-256 of G_round+1), proposer
(base58 peer ID, the signer), issued_at (unix seconds), updates (the contributors' signed
manifests, exactly as they signed them, sorted by sender). The signature is Ed25519 by
`proposer` over `b"bitswarm-sig/v1\\0"` + header + body, like a manifest's.

A record is self-certifying: every update in it carries its sender's own signature and names
the same swarm, round, base model, LoRA config and base adapter as the record, so a proposer
can choose among real updates but cannot invent one. Whether `new_adapter` is right is checked
by recomputing it (rounds/agreement.py), never taken on trust.

Errors: every malformed input raises wire.WireError(reason); nothing else escapes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from bitswarm.federation import signing
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.wire import (MAX_MANIFEST_BYTES, MAX_ROUND, MAX_TIME, SHA256_BYTES,
                                      UpdateManifest, WireError, _check_int, _check_str, _HEX64,
                                      _unpack, _unpack_framed, decode_manifest, lora_dict)

RECORD_MAGIC = b"BSRR"
RECORD_VERSION = 1
_HEADER = RECORD_MAGIC + bytes([RECORD_VERSION])
MAX_RECORD_UPDATES = 256             # contributors per round a record may name
MAX_RECORD_BYTES = 200 * 1024        # below the transport's 256 KiB gossip limit
_FIELDS = ("base_adapter", "base_model", "issued_at", "lora", "new_adapter", "proposer",
           "round", "rule", "swarm", "updates")


@dataclass(frozen=True)
class RoundRecord:
    """A decoded, verified round record (see the module docstring).

    updates: the contributors' decoded manifests, sorted by sender; update_bytes: the same
    manifests as signed bytes (what a record re-embeds). data: the record's own signed bytes.
    """

    swarm: str
    round: int
    base_model: str
    lora: dict
    rule: str
    base_adapter: bytes
    new_adapter: bytes
    proposer: str
    issued_at: int
    updates: tuple[UpdateManifest, ...]
    update_bytes: tuple[bytes, ...]
    data: bytes

    @property
    def contributors(self) -> list[str]:
        """Senders of the updates, sorted (base58 peer IDs)."""
        return [m.sender for m in self.updates]

    @property
    def priority(self) -> tuple[int, bytes]:
        """Sort key, smaller wins: more contributors first, then the proposer's rank."""
        return self.priority_at(None)

    def priority_at(self, quorum: int | None) -> tuple[int, bytes]:
        """`priority` with the contributor count capped at `quorum` (None: no cap): records
        of at least `quorum` contributors then differ by the proposer's rank alone."""
        n = len(self.updates) if quorum is None else min(len(self.updates), quorum)
        return (-n, proposer_rank(self.base_adapter, self.round, self.proposer))


def proposer_rank(base_adapter: bytes, round: int, proposer: str) -> bytes:
    """SHA-256 over (base adapter, round, proposer): an order of proposers that no one picks,
    fresh every round and different on every fork (the base adapter is not known before
    round `round` starts)."""
    return hashlib.sha256(b"bitswarm-rank\0" + base_adapter + round.to_bytes(8, "big")
                          + proposer.encode()).digest()


def encode_record(*, swarm: str, round: int, base_model: str, lora: dict, rule: str,
                  base_adapter: bytes, new_adapter: bytes, issued_at: int,
                  update_bytes: list[bytes], key_pair) -> RoundRecord:
    """Build and sign a record with `key_pair` (the proposer's libp2p Ed25519 KeyPair).

    update_bytes: the signed manifests of the contributors (any order; sorted here). Raises
    WireError when a field or an update is invalid (the checks a receiver applies).
    """
    updates = sorted(((decode_manifest(b), bytes(b)) for b in update_bytes),
                     key=lambda mb: mb[0].sender)
    body_map = {"swarm": swarm, "round": round, "base_model": base_model, "lora": lora_dict(lora),
                "rule": rule, "base_adapter": bytes(base_adapter),
                "new_adapter": bytes(new_adapter), "proposer": peer_id_of(key_pair),
                "issued_at": int(issued_at), "updates": [b for _, b in updates]}
    _check_body(body_map)
    body = msgpack.packb(dict(sorted(body_map.items())), use_bin_type=True)
    data = _HEADER + msgpack.packb([body, signing.sign(key_pair, _HEADER + body)],
                                   use_bin_type=True)
    if len(data) > MAX_RECORD_BYTES:
        raise WireError(f"round record is {len(data)} bytes > {MAX_RECORD_BYTES}")
    return _record(body_map, [m for m, _ in updates], data)


def decode_record(data: bytes, *, decode_update=decode_manifest) -> RoundRecord:
    """Parse, validate and verify a record: the proposer's signature, and every embedded
    update (signature by its sender, same swarm / round / base model / LoRA / base adapter
    as the record, distinct senders, sorted, the proposer among them).

    decode_update: bytes -> UpdateManifest (raising WireError); a caller may pass a cached
    form of wire.decode_manifest. Raises WireError.
    """
    outer = _unpack_framed(data, _HEADER, MAX_RECORD_BYTES, "round record")
    if not (isinstance(outer, list) and len(outer) == 2 and all(type(x) is bytes for x in outer)):
        raise WireError("round record frame must be [body: bin, signature: bin]")
    body, signature = outer
    body_map = _unpack(body, MAX_RECORD_BYTES, "round record body")
    if not isinstance(body_map, dict):
        raise WireError("round record body is not a map")
    _check_body(body_map)
    if not signing.verify(body_map["proposer"], _HEADER + body, signature):
        raise WireError(f"bad round record signature for proposer {body_map['proposer']}",
                        round=body_map["round"])
    updates = [decode_update(b) for b in body_map["updates"]]
    return _record(body_map, updates, bytes(data))


def _record(b: dict, updates: list[UpdateManifest], data: bytes) -> RoundRecord:
    senders = [m.sender for m in updates]
    if senders != sorted(set(senders)):
        raise WireError("round record updates must have distinct senders, sorted")
    if b["proposer"] not in senders:
        raise WireError("round record proposer is not among its contributors")
    lora = lora_dict(b["lora"])
    for m in updates:
        if (m.swarm, m.round, m.base_model, m.base_adapter) != (
                b["swarm"], b["round"], b["base_model"], b["base_adapter"]) \
                or m.lora != lora:          # decoded manifests hold canonical lora
            raise WireError(f"round record update of {m.sender} is for another round or state")
    return RoundRecord(swarm=b["swarm"], round=b["round"], base_model=b["base_model"],
                       lora=lora, rule=b["rule"], base_adapter=b["base_adapter"],
                       new_adapter=b["new_adapter"], proposer=b["proposer"],
                       issued_at=b["issued_at"], updates=tuple(updates),
                       update_bytes=tuple(b["updates"]), data=data)


def _check_body(b: dict) -> None:
    if set(b) != set(_FIELDS):
        raise WireError(f"round record fields: missing {sorted(set(_FIELDS) - set(b))}, "
                        f"extra {sorted(map(str, set(b) - set(_FIELDS)))}"[:200])
    _check_str("swarm", b["swarm"])
    _check_int("round", b["round"], 0, MAX_ROUND)
    if type(b["base_model"]) is not str or not _HEX64.fullmatch(b["base_model"]):
        raise WireError("base_model must be 64 lowercase hex chars (SHA-256)")
    if not isinstance(b["lora"], dict):
        raise WireError("lora must be a map")
    lora_dict(b["lora"])
    _check_str("rule", b["rule"])
    for k in ("base_adapter", "new_adapter"):
        if type(b[k]) is not bytes or len(b[k]) != SHA256_BYTES:
            raise WireError(f"{k} must be 32 bytes")
    _check_str("proposer", b["proposer"])
    _check_int("issued_at", b["issued_at"], 0, MAX_TIME)
    ups = b["updates"]
    if (not isinstance(ups, list) or not 1 <= len(ups) <= MAX_RECORD_UPDATES
            or any(type(u) is not bytes or len(u) > MAX_MANIFEST_BYTES for u in ups)):
        raise WireError(f"updates must be 1..{MAX_RECORD_UPDATES} signed manifests")
