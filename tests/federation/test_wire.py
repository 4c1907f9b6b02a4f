"""Manifest and payload-request wire format: round trip, signatures, hostile input."""
from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import wire
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.wire import UpdateManifest, WireError
from bitswarm.kernels.config import LoRAConfig

BASE = hashlib.sha256(b"base model").hexdigest()
LORA = LoRAConfig(rank=8, alpha=16.0)


@pytest.fixture(scope="module")
def key_pair():
    return create_new_key_pair()


def _manifest(key_pair, **over) -> UpdateManifest:
    fields = dict(swarm="test-swarm", round=3, base_model=BASE, lora=wire.lora_dict(LORA),
                  sender=peer_id_of(key_pair), tokens=4096, codec="int8-block-zstd/1",
                  payload_sha256=hashlib.sha256(b"payload").digest(), payload_size=7,
                  base_adapter=hashlib.sha256(b"G_3").digest(), issued_at=1_800_000_000,
                  rule="bounded-fedavg")
    fields.update(over)
    return UpdateManifest(**fields)


def _split(data: bytes) -> tuple[bytes, dict, bytes]:
    body, sig = msgpack.unpackb(data[5:], raw=False)
    return data[:5], msgpack.unpackb(body, raw=False), sig


def _resign(key_pair, body_map: dict) -> bytes:
    """Build a correctly signed frame around an arbitrary body (to test body checks)."""
    body = msgpack.packb(body_map, use_bin_type=True)
    header = wire.MANIFEST_MAGIC + bytes([wire.WIRE_VERSION])
    from bitswarm.federation import signing
    return header + msgpack.packb([body, signing.sign(key_pair, header + body)], use_bin_type=True)


def test_round_trip(key_pair):
    m = _manifest(key_pair)
    data = wire.encode_manifest(m, key_pair)
    assert data[:4] == b"BSWM" and data[4] == 2
    assert len(data) < 512
    assert wire.decode_manifest(data) == m


def test_lora_dict_from_config_and_mapping():
    d = wire.lora_dict(LoRAConfig(rank=4, alpha=8, target_modules=("v_proj", "q_proj")))
    assert d == {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"], "freeze_A": False}
    assert wire.lora_dict(d) == d
    with pytest.raises(WireError, match="rank"):
        wire.lora_dict({**d, "rank": 0})


def test_signature_must_be_by_sender(key_pair):
    other = create_new_key_pair()
    data = wire.encode_manifest(_manifest(key_pair, sender=peer_id_of(other)), key_pair)
    with pytest.raises(WireError, match="bad signature") as e:
        wire.decode_manifest(data)
    assert e.value.round == 3  # the claimed round, for filing the rejection


def test_tampered_body_fails_signature(key_pair):
    header, body_map, sig = _split(wire.encode_manifest(_manifest(key_pair), key_pair))
    body_map["tokens"] = 10**9
    tampered = header + msgpack.packb([msgpack.packb(body_map), sig])
    with pytest.raises(WireError, match="bad signature"):
        wire.decode_manifest(tampered)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: b"XXXX" + d[4:], "magic"),
    (lambda d: d[:4] + b"\x01" + d[5:], "version"),      # v1 (no base adapter) is refused
    (lambda d: d + b"\x00", "trailing"),
    (lambda d: d[:5] + b"\xc1" + d[6:], "msgpack"),
    (lambda d: d[:5] + msgpack.packb([b"x"]), "frame"),
    (lambda d: d + b"\x00" * (wire.MAX_MANIFEST_BYTES + 1), "limit"),
    (lambda d: "not bytes", "bytes"),
])
def test_malformed_frames(key_pair, mutate, match):
    data = wire.encode_manifest(_manifest(key_pair), key_pair)
    with pytest.raises(WireError, match=match):
        wire.decode_manifest(mutate(data))


@pytest.mark.parametrize("change, match", [
    (lambda b: b.pop("tokens"), "missing"),
    (lambda b: b.update(extra=1), "extra"),
    (lambda b: b.update(round=-1), "round"),
    (lambda b: b.update(round=True), "round"),          # bool is not an int
    (lambda b: b.update(round=2**50), "round"),
    (lambda b: b.update(tokens=0), "tokens"),
    (lambda b: b.update(tokens="12"), "tokens"),
    (lambda b: b.update(payload_size=2**40), "payload_size"),
    (lambda b: b.update(payload_sha256=b"short"), "payload_sha256"),
    (lambda b: b.update(base_model="ABC"), "base_model"),
    (lambda b: b.update(swarm=""), "swarm"),
    (lambda b: b.update(swarm="x" * 1000), "swarm"),
    (lambda b: b["lora"].update(alpha=float("nan")), "alpha"),
    (lambda b: b["lora"].update(freeze_A=1), "freeze_A"),
    (lambda b: b["lora"].pop("rank"), "lora"),
    (lambda b: b["lora"].update(target_modules=["v_proj", "q_proj"]), "canonical"),
])
def test_bad_fields_rejected_even_when_signed(key_pair, change, match):
    _, body_map, _ = _split(wire.encode_manifest(_manifest(key_pair), key_pair))
    change(body_map)
    with pytest.raises(WireError, match=match):
        wire.decode_manifest(_resign(key_pair, body_map))


def test_encode_refuses_invalid_fields(key_pair):
    with pytest.raises(WireError, match="tokens"):
        wire.encode_manifest(_manifest(key_pair, tokens=-5), key_pair)


def test_deep_or_wide_msgpack_is_refused(key_pair):
    header = wire.MANIFEST_MAGIC + bytes([wire.WIRE_VERSION])
    wide = header + msgpack.packb([0] * 5000)
    with pytest.raises(WireError):
        wire.decode_manifest(wide)
    # A bin header claiming 4 GiB in a 10-byte message must not allocate.
    with pytest.raises(WireError):
        wire.decode_manifest(header + b"\x92\xc6\xff\xff\xff\xff")


def test_check_compatible(key_pair):
    m = _manifest(key_pair)
    wire.check_compatible(m, swarm="test-swarm", base_model=BASE, lora=LORA)
    with pytest.raises(WireError, match="swarm"):
        wire.check_compatible(m, swarm="other", base_model=BASE, lora=LORA)
    with pytest.raises(WireError, match="base model"):
        wire.check_compatible(m, swarm="test-swarm", base_model="0" * 64, lora=LORA)
    with pytest.raises(WireError, match="LoRA"):
        wire.check_compatible(m, swarm="test-swarm", base_model=BASE,
                              lora=dataclasses.replace(LORA, rank=16))
    with pytest.raises(WireError, match="LoRA"):
        wire.check_compatible(m, swarm="test-swarm", base_model=BASE,
                              lora=dataclasses.replace(LORA, freeze_A=True))


def test_payload_request_round_trip_and_hostile():
    sha = hashlib.sha256(b"p").digest()
    req = wire.encode_payload_request(12, sha)
    assert req[:4] == b"BSWR" and len(req) <= wire.MAX_REQUEST_BYTES
    assert wire.decode_payload_request(req) == (12, sha)
    for bad in (req[:-1], req + b"\x00", b"BSWM" + req[4:], req[:4] + b"\x09" + req[5:],
                req[:5] + msgpack.packb([12, "x" * 32]), req[:5] + msgpack.packb([-1, sha]),
                req[:5] + msgpack.packb({"round": 12}), b"", req + b"\x00" * 200):
        with pytest.raises(WireError):
            wire.decode_payload_request(bad)
    with pytest.raises(WireError):
        wire.encode_payload_request(1, b"short")
