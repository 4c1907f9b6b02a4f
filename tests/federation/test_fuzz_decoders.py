"""Fuzzing every decoder of peer input with hypothesis (bounded, seeded: derandomized, so a
run is reproducible; failing examples are kept in hypothesis' database in .hypothesis/).

Each decoder, on arbitrary bytes and on mutations of valid messages (byte flips, cuts,
insertions), either returns a value that passes its own checks or raises its one error type
(wire.WireError for manifests, round records and requests; codecs.CodecError for payloads):
never another exception, never a hang, never an allocation beyond the input's bound.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import codecs, wire
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.round_record import decode_record, encode_record
from bitswarm.federation.rounds.secure_intake import SecAggIntake
from bitswarm.federation.secagg import messages as sa

FUZZ = settings(max_examples=400, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
KP = create_new_key_pair()
SHAPES = {"layers.0.q_proj.lora_A": (4, 16), "layers.0.q_proj.lora_B": (16, 4)}
LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj"], "freeze_A": False}
BASE = hashlib.sha256(b"G").digest()
MANIFEST = wire.encode_manifest(wire.UpdateManifest(
    swarm="fuzz", round=3, base_model="ab" * 32, lora=LORA, sender=peer_id_of(KP), tokens=10,
    codec=codecs.INT8_CODEC, payload_sha256=b"\x01" * 32, payload_size=100, base_adapter=BASE,
    issued_at=int(time.time()), rule="bounded-fedavg"), KP)
RECORD = encode_record(swarm="fuzz", round=3, base_model="ab" * 32, lora=LORA,
                       rule="bounded-fedavg", base_adapter=BASE, new_adapter=b"\x02" * 32,
                       issued_at=int(time.time()), update_bytes=[MANIFEST], key_pair=KP).data
_rng = np.random.default_rng(0)
DELTA = {k: (_rng.standard_normal(s) * 1e-2).astype(np.float32) for k, s in SHAPES.items()}
PAYLOADS = [codecs.encode_update(DELTA, codec=c)[0] for c in (codecs.INT8_CODEC, codecs.RAW_CODEC)]
MAX_PAYLOAD = codecs.max_payload_bytes(SHAPES)
_SA = dict(swarm="fuzz", round=3, base_adapter=BASE, rule="fedavg+secagg", sender=peer_id_of(KP),
           issued_at=int(time.time()), key_pair=KP)
_OTHER = peer_id_of(create_new_key_pair())
SECAGG = [
    sa.encode_message(kind="keys", c_public=b"\x03" * 32, s_public=b"\x04" * 32, tokens=7, **_SA),
    sa.encode_message(kind="shares", cohort=sorted([peer_id_of(KP), _OTHER]), threshold=2,
                      commit_b=b"\x05" * 32, ciphertexts=[[_OTHER, b"\x06" * 160]], **_SA),
    sa.encode_message(kind="consistency", cohort_sha256=b"\x07" * 32, survivors=[peer_id_of(KP)],
                      **_SA),
    sa.encode_message(kind="unmask", cohort_sha256=b"\x07" * 32, survivors=[peer_id_of(KP)],
                      shares=[[peer_id_of(KP), 1, b"\x08" * 66]], **_SA)]
N_VALUES = sum(int(np.prod(s)) for s in SHAPES.values())
MASKED = sa.encode_masked([peer_id_of(KP), _OTHER] if peer_id_of(KP) < _OTHER
                          else [_OTHER, peer_id_of(KP)], np.arange(N_VALUES, dtype=np.uint32))
SHARE_PLAIN = sa.encode_share_plain("a", "b", 2, b"\x01" * 66, b"\x02" * 66)


@st.composite
def mutated(draw, valid: bytes):
    """A valid message with a few byte flips, a cut, or an insertion."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            data = data[:i]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _only(error, fn, data):
    try:
        fn(data)
    except error:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(MANIFEST)))
def test_manifest_decoder(data):
    _only(wire.WireError, wire.decode_manifest, data)


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(RECORD)))
def test_round_record_decoder(data):
    _only(wire.WireError, decode_record, data)


@FUZZ
@given(st.one_of(st.binary(max_size=4096), mutated(PAYLOADS[0]), mutated(PAYLOADS[1])))
def test_payload_decoder(data):
    try:
        out = codecs.decode_update(data, expected_shapes=SHAPES, max_bytes=MAX_PAYLOAD)
    except codecs.CodecError:
        return
    assert {k: v.shape for k, v in out.items()} == SHAPES
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())


@FUZZ
@given(st.one_of(st.binary(max_size=256),
                 mutated(wire.encode_payload_request(3, b"\x01" * 32)),
                 mutated(wire.encode_state_request(3, b"\x01" * 32))))
def test_request_decoders(data):
    _only(wire.WireError, wire.decode_payload_request, data)
    _only(wire.WireError, wire.decode_state_request, data)


@FUZZ
@given(st.one_of(st.binary(max_size=2048), *(mutated(m) for m in SECAGG)))
def test_secure_aggregation_message_decoder_and_intake(data):
    _only(wire.WireError, sa.decode_message, data)
    intake = SecAggIntake(peer_id="me", swarm="fuzz", rule="fedavg+secagg", max_rounds_ahead=2,
                          max_peers=8)
    intake.relayable("someone", data)           # never raises on hostile input
    intake.on_gossip("someone", data)


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(MASKED), mutated(SHARE_PLAIN)))
def test_masked_input_and_share_decoders(data):
    try:
        cohort, y = sa.decode_masked(data, N_VALUES)
        assert y.shape == (N_VALUES,) and y.dtype == np.uint32 and cohort == sorted(set(cohort))
    except wire.WireError:
        pass
    _only(wire.WireError, sa.decode_share_plain, data)


def test_the_fuzzed_seeds_are_valid():
    """The mutations start from messages that do decode (else the fuzz proves little)."""
    assert wire.decode_manifest(MANIFEST).round == 3
    assert decode_record(RECORD).contributors == [peer_id_of(KP)]
    for p in PAYLOADS:
        assert set(codecs.decode_update(p, expected_shapes=SHAPES, max_bytes=MAX_PAYLOAD)) == set(SHAPES)
    assert [sa.decode_message(m).kind for m in SECAGG] == ["keys", "shares", "consistency", "unmask"]
    assert sa.decode_masked(MASKED, N_VALUES)[1][5] == 5
    assert sa.decode_share_plain(SHARE_PLAIN)[2] == 2
