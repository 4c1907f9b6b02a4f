"""Wire format of the federation protocol: signed update manifests and payload requests.

Every message starts with a 4-byte magic and a 1-byte version, like a file header, so a reader
rejects foreign or future data before parsing anything. The rest is msgpack, parsed with hard
limits (input size, string/bin/array/map lengths, `raw=False`, `strict_map_key=True`) and then
checked field by field: exact key set, exact Python types (a bool is not an int), and ranges.

Manifest (gossiped, small):   b"BSWM" | u8 version | msgpack [body: bin, signature: bin]
    body = msgpack map (keys sorted) of the UpdateManifest fields; signature = Ed25519 by
    `sender` (signing.sign) over header + body. The signature binds the sender, not the
    forwarder: gossip may arrive from anyone, and a verifier needs only the sender's peer ID.
Payload request (sent with transport.fetch):   b"BSWR" | u8 version | msgpack [round, sha256]
State request (transport.fetch):   b"BSWS" | u8 version | msgpack [round, adapter sha256]
Round records (signed decisions of a round) live in `round_record.py` and share the framing.

Version 2 (protocol v2) adds `base_adapter` and `issued_at` to the manifest: an update is bound
to the exact global adapter it was trained from (the swarm's history) and to a time window, so
it can never count in another round, another run of the swarm, or a fork.

Errors: every malformed input raises WireError(reason); nothing else escapes the decoders.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from bitswarm.federation import signing

MANIFEST_MAGIC = b"BSWM"
REQUEST_MAGIC = b"BSWR"
STATE_REQUEST_MAGIC = b"BSWS"
WIRE_VERSION = 2
_MANIFEST_HEADER = MANIFEST_MAGIC + bytes([WIRE_VERSION])
_REQUEST_HEADER = REQUEST_MAGIC + bytes([WIRE_VERSION])
_STATE_REQUEST_HEADER = STATE_REQUEST_MAGIC + bytes([WIRE_VERSION])

MAX_MANIFEST_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 128
# Ranges that no honest node reaches; they keep hostile numbers out of arithmetic and logs.
MAX_ROUND = 2**40
MAX_TOKENS = 10**12                  # tokens trained per round (FedAvg weight)
MAX_PAYLOAD_BYTES = 1 << 30          # 1 GiB; receivers bound it further from expected shapes
MAX_RANK = 4096
MAX_ALPHA = 1e6
MAX_NAME_CHARS = 128                 # swarm, sender, codec, module names
MAX_TIME = 2**40                     # issued_at, unix seconds
MAX_TARGET_MODULES = 16
SHA256_BYTES = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")


class WireError(ValueError):
    """A message failed to parse or validate.

    Attributes:
        reason: human-readable cause, safe to log.
        round: the round the (unverified) body named, when it parsed that far; only for filing
            the rejection, never to be trusted.
    """

    def __init__(self, reason: str, *, round: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.round = round


class Incompatible(WireError):
    """A valid message of a node that cannot federate with us: another swarm, base model, LoRA
    config, aggregation rule or codec, or a sender outside our allow-list.

    Attributes: sender, the peer ID whose update (or record rule) it is, when known."""

    def __init__(self, reason: str, *, sender: str | None = None) -> None:
        super().__init__(reason)
        self.sender = sender


@dataclass(frozen=True)
class UpdateManifest:
    """Announcement of one peer's LoRA delta for one round; the payload is fetched separately.

    swarm: swarm name. round: round number (>= 0). base_model: lowercase hex SHA-256 of the base
    model (64 chars). lora: canonical LoRA config (see `lora_dict`). sender: base58 peer ID of the
    signer. tokens: tokens trained on this round (the FedAvg weight n_k, McMahan et al. 2017,
    arXiv:1602.05629). codec: payload codec name (bitswarm.federation.codecs). payload_sha256:
    32-byte SHA-256 of the payload. payload_size: payload length in bytes. base_adapter:
    32-byte SHA-256 (`state_hash.adapter_sha256`) of the global adapter G_round the delta was
    trained from. issued_at: unix seconds when the sender signed it (receivers bound its age).
    rule: the swarm's aggregation rule (aggregation registry name), part of compatibility.
    """

    swarm: str
    round: int
    base_model: str
    lora: dict
    sender: str
    tokens: int
    codec: str
    payload_sha256: bytes
    payload_size: int
    base_adapter: bytes
    issued_at: int
    rule: str


_FIELDS = tuple(f.name for f in fields(UpdateManifest))
_LORA_FIELDS = ("alpha", "freeze_A", "rank", "target_modules")


def lora_dict(lora: Any) -> dict:
    """Canonical LoRA config dict {rank: int, alpha: float, target_modules: sorted list[str],
    freeze_A: bool} from a LoRAConfig (bitswarm.kernels.config) or a mapping with those keys.

    target_modules is sorted because only the set matters. Raises WireError on bad values.
    """
    if isinstance(lora, Mapping):
        get = lora.__getitem__
    else:
        get = lambda k: getattr(lora, k)  # noqa: E731 - LoRAConfig-like object
    try:
        raw = {k: get(k) for k in _LORA_FIELDS}
    except (KeyError, AttributeError) as e:
        raise WireError(f"lora config lacks field {e}") from None
    rank, alpha, modules, freeze_a = raw["rank"], raw["alpha"], raw["target_modules"], raw["freeze_A"]
    if type(rank) is not int or not 1 <= rank <= MAX_RANK:
        raise WireError(f"lora.rank must be an int in [1, {MAX_RANK}], got {rank!r}")
    if type(alpha) not in (int, float) or not (math.isfinite(alpha) and 0 < alpha <= MAX_ALPHA):
        raise WireError(f"lora.alpha must be a finite number in (0, {MAX_ALPHA}], got {alpha!r}")
    if type(freeze_a) is not bool:
        raise WireError(f"lora.freeze_A must be a bool, got {freeze_a!r}")
    if (not isinstance(modules, (list, tuple)) or not 1 <= len(modules) <= MAX_TARGET_MODULES
            or any(type(m) is not str or not 0 < len(m) <= MAX_NAME_CHARS for m in modules)
            or len(set(modules)) != len(modules)):
        raise WireError(f"lora.target_modules must be 1..{MAX_TARGET_MODULES} distinct names, "
                        f"got {modules!r}")
    return {"rank": rank, "alpha": float(alpha), "target_modules": sorted(modules),
            "freeze_A": freeze_a}


def encode_manifest(m: UpdateManifest, key_pair) -> bytes:
    """Serialize and sign `m` with `key_pair` (libp2p Ed25519 KeyPair of `m.sender`).

    Returns header + msgpack [body, signature], at most MAX_MANIFEST_BYTES.
    Raises WireError if a field is invalid (the same checks a receiver applies).
    """
    body_map = {name: getattr(m, name) for name in _FIELDS}
    body_map["lora"] = lora_dict(m.lora)
    _check_body(body_map)
    body = msgpack.packb(dict(sorted(body_map.items())), use_bin_type=True)
    signature = signing.sign(key_pair, _MANIFEST_HEADER + body)
    data = _MANIFEST_HEADER + msgpack.packb([body, signature], use_bin_type=True)
    if len(data) > MAX_MANIFEST_BYTES:
        raise WireError(f"manifest is {len(data)} bytes > {MAX_MANIFEST_BYTES}")
    return data


def decode_manifest(data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> UpdateManifest:
    """Parse, validate and verify a manifest; the signature must be by `sender`.

    Raises WireError for: more than `max_bytes`, wrong magic/version, not msgpack, trailing
    bytes, missing/extra/mistyped fields, out-of-range numbers, a bad signature (then `.round`
    holds the claimed round).
    """
    outer = _unpack_framed(data, _MANIFEST_HEADER, max_bytes, "manifest")
    if not (isinstance(outer, list) and len(outer) == 2
            and all(type(x) is bytes for x in outer)):
        raise WireError("manifest frame must be [body: bin, signature: bin]")
    body, signature = outer
    body_map = _unpack(body, max_bytes, "manifest body")
    if not isinstance(body_map, dict):
        raise WireError("manifest body is not a map")
    _check_body(body_map)
    if body_map["lora"] != lora_dict(body_map["lora"]):
        raise WireError("manifest lora config is not canonical")
    if not signing.verify(body_map["sender"], _MANIFEST_HEADER + body, signature):
        raise WireError(f"bad signature for sender {body_map['sender']}", round=body_map["round"])
    return UpdateManifest(**body_map)


def check_compatible(m: UpdateManifest, *, swarm: str, base_model: str, lora: Any) -> None:
    """Raise Incompatible (a WireError, sender = m.sender) unless `m` is for this swarm, this
    base model and the same LoRA config.

    `lora` is a LoRAConfig or mapping (see `lora_dict`); base_model is hex SHA-256.
    """
    if m.swarm != swarm:
        raise Incompatible(f"wrong swarm {m.swarm!r} (expected {swarm!r})", sender=m.sender)
    if m.base_model != base_model.lower():
        raise Incompatible(f"wrong base model {m.base_model[:16]}... (expected "
                           f"{base_model[:16]}...)", sender=m.sender)
    # A decoded manifest's lora is canonical (decode_manifest refuses others), so an equal
    # mapping is the same config; anything else is canonicalized once to compare.
    if m.lora != lora and lora_dict(m.lora) != (ours := lora_dict(lora)):
        raise Incompatible(f"different LoRA config {m.lora} (expected {ours})",
                           sender=m.sender)


def encode_state_request(round: int, adapter_sha256: bytes) -> bytes:
    """Request for the global adapter G_round whose SHA-256 is `adapter_sha256` (32 bytes)."""
    _check_request(round, adapter_sha256)
    return _STATE_REQUEST_HEADER + msgpack.packb([round, bytes(adapter_sha256)], use_bin_type=True)


def decode_state_request(data: bytes) -> tuple[int, bytes]:
    """Parse a state request -> (round, adapter sha256). Raises WireError when malformed."""
    obj = _unpack_framed(data, _STATE_REQUEST_HEADER, MAX_REQUEST_BYTES, "state request")
    if not (isinstance(obj, list) and len(obj) == 2):
        raise WireError("state request must be [round, sha256]")
    _check_request(obj[0], obj[1])
    return obj[0], obj[1]


def encode_payload_request(round: int, payload_sha256: bytes) -> bytes:
    """Request for the payload of `round` whose SHA-256 is `payload_sha256` (32 bytes)."""
    _check_request(round, payload_sha256)
    return _REQUEST_HEADER + msgpack.packb([round, bytes(payload_sha256)], use_bin_type=True)


def decode_payload_request(data: bytes) -> tuple[int, bytes]:
    """Parse a payload request -> (round, sha256). Raises WireError on anything malformed."""
    obj = _unpack_framed(data, _REQUEST_HEADER, MAX_REQUEST_BYTES, "payload request")
    if not (isinstance(obj, list) and len(obj) == 2):
        raise WireError("payload request must be [round, sha256]")
    _check_request(obj[0], obj[1])
    return obj[0], obj[1]


# --- helpers -------------------------------------------------------------------------------

def _unpack_framed(data: bytes, header: bytes, max_bytes: int, what: str) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise WireError(f"{what} is {len(data)} bytes > limit {max_bytes}")
    if data[:len(header) - 1] != header[:-1]:
        raise WireError(f"{what} has wrong magic {data[:len(header) - 1]!r}")
    if data[len(header) - 1:len(header)] != header[-1:]:
        raise WireError(f"{what} has unsupported version {data[len(header) - 1:len(header)]!r}")
    return _unpack(data[len(header):], max_bytes, what)


def _unpack(data: bytes, max_bytes: int, what: str) -> Any:
    # Every length limit is the input size: msgpack then never allocates more than it was given.
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, use_list=True, max_buffer_size=max(max_bytes, 1),
        max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=1024, max_map_len=64,
        max_ext_len=0)
    try:
        unpacker.feed(data)
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise WireError(f"{what} is truncated") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"{what} is not valid msgpack: {e}") from None
    if unpacker.tell() != len(data):
        raise WireError(f"{what} has {len(data) - unpacker.tell()} trailing bytes")
    return obj


def _check_int(name: str, v: Any, lo: int, hi: int) -> None:
    if type(v) is not int or not lo <= v <= hi:
        raise WireError(f"{name} must be an int in [{lo}, {hi}], got {v!r}"[:200])


def _check_str(name: str, v: Any) -> None:
    if type(v) is not str or not 0 < len(v) <= MAX_NAME_CHARS:
        raise WireError(f"{name} must be a string of 1..{MAX_NAME_CHARS} chars, got {v!r}"[:200])


def _check_body(b: dict) -> None:
    keys = set(b)
    if keys != set(_FIELDS):
        missing, extra = sorted(set(_FIELDS) - keys), sorted(map(str, keys - set(_FIELDS)))
        raise WireError(f"manifest fields: missing {missing}, extra {extra}"[:200])
    _check_str("swarm", b["swarm"])
    _check_int("round", b["round"], 0, MAX_ROUND)
    if type(b["base_model"]) is not str or not _HEX64.fullmatch(b["base_model"]):
        raise WireError("base_model must be 64 lowercase hex chars (SHA-256)")
    if not isinstance(b["lora"], dict) or set(b["lora"]) != set(_LORA_FIELDS):
        raise WireError(f"lora must be a map with exactly {list(_LORA_FIELDS)}")
    lora_dict(b["lora"])
    _check_str("sender", b["sender"])
    _check_int("tokens", b["tokens"], 1, MAX_TOKENS)
    _check_str("codec", b["codec"])
    if type(b["payload_sha256"]) is not bytes or len(b["payload_sha256"]) != SHA256_BYTES:
        raise WireError("payload_sha256 must be 32 bytes")
    _check_int("payload_size", b["payload_size"], 1, MAX_PAYLOAD_BYTES)
    if type(b["base_adapter"]) is not bytes or len(b["base_adapter"]) != SHA256_BYTES:
        raise WireError("base_adapter must be 32 bytes")
    _check_int("issued_at", b["issued_at"], 0, MAX_TIME)
    _check_str("rule", b["rule"])


def _check_request(round: Any, sha: Any) -> None:
    _check_int("round", round, 0, MAX_ROUND)
    if type(sha) is not bytes or len(sha) != SHA256_BYTES:
        raise WireError("sha256 must be 32 bytes")
