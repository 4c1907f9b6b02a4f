"""Round records: round trip, signature, and the self-certifying checks on embedded updates."""
from __future__ import annotations

import hashlib
import time

import msgpack
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import signing, wire
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.round_record import (MAX_RECORD_BYTES, decode_record, encode_record,
                                              proposer_rank)
from bitswarm.federation.wire import WireError

BASE_MODEL = hashlib.sha256(b"model").hexdigest()
LORA = wire.lora_dict({"rank": 4, "alpha": 8.0, "target_modules": ["q_proj"], "freeze_A": False})
G = hashlib.sha256(b"G_7").digest()
G_NEXT = hashlib.sha256(b"G_8").digest()


def _update(kp, **over) -> bytes:
    fields = dict(swarm="s", round=7, base_model=BASE_MODEL, lora=LORA, sender=peer_id_of(kp),
                  tokens=100, codec="int8-block-zstd/1", payload_sha256=b"\x01" * 32,
                  payload_size=10, base_adapter=G, issued_at=int(time.time()),
                  rule="bounded-fedavg")
    fields.update(over)
    return wire.encode_manifest(wire.UpdateManifest(**fields), kp)


def _record(proposer, updates, **over):
    kw = dict(swarm="s", round=7, base_model=BASE_MODEL, lora=LORA, rule="bounded-fedavg",
              base_adapter=G, new_adapter=G_NEXT, issued_at=int(time.time()),
              update_bytes=updates, key_pair=proposer)
    kw.update(over)
    return encode_record(**kw)


def test_round_trip_sorted_by_sender_and_priority():
    kps = [create_new_key_pair() for _ in range(3)]
    rec = _record(kps[0], [_update(k) for k in kps])
    back = decode_record(rec.data)
    assert back == rec and back.contributors == sorted(peer_id_of(k) for k in kps)
    assert back.proposer == peer_id_of(kps[0]) and back.new_adapter == G_NEXT
    assert rec.priority == (-3, proposer_rank(G, 7, rec.proposer))
    assert len(rec.data) < 2048


def test_more_contributors_win_then_rank():
    kps = [create_new_key_pair() for _ in range(3)]
    big = _record(kps[0], [_update(k) for k in kps])
    small = [_record(k, [_update(k)]) for k in kps[1:]]
    assert min([*small, big], key=lambda r: r.priority) is big
    assert min(small, key=lambda r: r.priority).proposer == min(
        (r.proposer for r in small), key=lambda p: proposer_rank(G, 7, p))


def test_at_a_quorum_cap_records_that_met_it_differ_by_rank_alone():
    """agreement.ranked's large-swarm order: counts capped at the quorum, so a later record
    holding more updates does not beat one that already met the quorum unless its proposer
    ranks better; below the quorum more contributors still win."""
    from bitswarm.federation.rounds.agreement import ranked
    kps = [create_new_key_pair() for _ in range(5)]
    ups = [_update(k) for k in kps]
    recs = [_record(kps[i], ups[:n]) for i, n in enumerate((3, 4, 5))]   # 3, 4, 5 updates
    by_rank = sorted(recs, key=lambda r: proposer_rank(G, 7, r.proposer))
    assert ranked(recs)[0] is recs[2]                      # uncapped: the 5-update record
    assert ranked(recs, quorum=3) == by_rank               # all met 3: rank alone
    capped4 = ranked(recs, quorum=4)                       # the 3-update record is below it
    assert capped4[-1] is recs[0]
    assert capped4[:2] == sorted(recs[1:], key=lambda r: proposer_rank(G, 7, r.proposer))
    assert recs[1].priority_at(4) == (-4, proposer_rank(G, 7, recs[1].proposer))
    assert recs[2].priority_at(None) == recs[2].priority == (-5, proposer_rank(G, 7,
                                                                               recs[2].proposer))


def test_a_tampered_record_fails_the_proposer_signature():
    kp = create_new_key_pair()
    rec = _record(kp, [_update(kp)])
    body, sig = msgpack.unpackb(rec.data[5:], raw=False)
    body_map = msgpack.unpackb(body, raw=False)
    body_map["new_adapter"] = b"\x00" * 32
    forged = rec.data[:5] + msgpack.packb([msgpack.packb(body_map, use_bin_type=True), sig],
                                          use_bin_type=True)
    with pytest.raises(WireError, match="signature"):
        decode_record(forged)


@pytest.mark.parametrize("over, needle", [
    (dict(round=6), "another round or state"),
    (dict(base_adapter=b"\x09" * 32), "another round or state"),
    (dict(swarm="t"), "another round or state"),
])
def test_updates_must_match_the_record(over, needle):
    kp = create_new_key_pair()
    with pytest.raises(WireError, match=needle):
        _record(kp, [_update(kp, **over)])


def test_the_proposer_must_contribute_and_updates_must_be_real():
    a, b = create_new_key_pair(), create_new_key_pair()
    with pytest.raises(WireError, match="proposer is not among"):
        _record(a, [_update(b)])
    forged = _update(b, tokens=10**9)[:-3] + b"abc"          # broken signature of b's update
    with pytest.raises(WireError):
        _record(a, [_update(a), forged])
    # A record signed around a forged embedded update is refused by every receiver.
    body_map = {"swarm": "s", "round": 7, "base_model": BASE_MODEL, "lora": LORA,
                "rule": "bounded-fedavg", "base_adapter": G, "new_adapter": G_NEXT,
                "proposer": peer_id_of(a), "issued_at": int(time.time()),
                "updates": sorted([_update(a), forged])}
    body = msgpack.packb(dict(sorted(body_map.items())), use_bin_type=True)
    header = b"BSRR\x01"
    data = header + msgpack.packb([body, signing.sign(a, header + body)], use_bin_type=True)
    with pytest.raises(WireError):
        decode_record(data)


@pytest.mark.parametrize("mutate", [
    lambda d: d[:10], lambda d: b"BSRX" + d[4:], lambda d: d[:4] + b"\x02" + d[5:],
    lambda d: d + b"\x00", lambda d: b"x" * (MAX_RECORD_BYTES + 1)])
def test_malformed_frames(mutate):
    kp = create_new_key_pair()
    with pytest.raises(WireError):
        decode_record(mutate(_record(kp, [_update(kp)]).data))


def test_state_request_round_trip():
    req = wire.encode_state_request(5, G)
    assert wire.decode_state_request(req) == (5, G)
    with pytest.raises(WireError):
        wire.decode_state_request(wire.encode_payload_request(5, G))
