"""Gossip intake on its own: window, dedupe, sender cap, compatibility, freshness, base
adapter, round records, the swarm view, channel hand-over.

Real signed manifests (wire.encode_manifest), no network: intake is a plain object fed bytes.
"""
from __future__ import annotations

import hashlib
import logging
import time

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation import wire
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.round_record import encode_record
from bitswarm.federation.transport import IGNORE
from bitswarm.federation.rounds.intake import ManifestIntake, RecordSeen

SWARM = "intake-swarm"
BASE = hashlib.sha256(b"intake base").hexdigest()
LORA = wire.lora_dict({"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"],
                       "freeze_A": False})
ME = peer_id_of(create_new_key_pair())
B0 = hashlib.sha256(b"G_r").digest()          # the base adapter digest of the round


def _intake(**over) -> ManifestIntake:
    kw = dict(peer_id=ME, swarm=SWARM, base_model=BASE, lora=LORA, max_payload=10_000,
              max_rounds_ahead=2, max_peers_per_round=3, rule="fedavg")
    kw.update(over)
    return ManifestIntake(**kw)


def _manifest(rnd: int, kp=None, signer=None, **over) -> tuple[str, bytes]:
    kp = kp or create_new_key_pair()
    fields = dict(swarm=SWARM, round=rnd, base_model=BASE, lora=LORA, sender=peer_id_of(kp),
                  tokens=100, codec="int8-block-zstd/1",
                  payload_sha256=hashlib.sha256(b"p").digest(), payload_size=1000,
                  base_adapter=B0, issued_at=int(time.time()), rule="fedavg")
    fields.update(over)
    return fields["sender"], wire.encode_manifest(wire.UpdateManifest(**fields), signer or kp)


def test_window_dedupe_and_sender_cap():
    intake = _intake()
    intake.enter(5)
    s_ok, ok = _manifest(6)
    intake.on_gossip(s_ok, ok)
    intake.on_gossip(s_ok, ok)                       # republished: deduped
    intake.on_gossip(*_manifest(4))                  # below the floor
    intake.on_gossip(*_manifest(8))                  # beyond floor + max_rounds_ahead
    assert intake.buffered(6) == [s_ok] and intake.buffered(4) == intake.buffered(8) == []
    assert intake.latest_round_seen == 8             # not buffered, but a claim of a head
    more = [_manifest(7) for _ in range(4)]
    for sender, data in more:
        intake.on_gossip(sender, data)
    assert intake.buffered(7) == sorted(s for s, _ in more[:3])   # the 4th sender is dropped


@pytest.mark.parametrize("over, needle", [
    (dict(swarm="other"), "wrong swarm"), (dict(base_model="0" * 64), "wrong base model"),
    (dict(lora={**LORA, "rank": 8}), "LoRA config"), (dict(codec="gzip/1"), "unknown codec"),
    (dict(payload_size=10_001), "exceeds the bound")])
def test_incompatible_manifests_are_rejected_with_a_reason(over, needle):
    intake = _intake()
    state = intake.enter(0)
    sender, data = _manifest(0, **over)
    intake.on_gossip(sender, data)
    assert intake.buffered(0) == [] and len(state.rejected) == 1
    assert state.rejected[0][0] == sender and needle in state.rejected[0][1]


def test_senders_refused_as_incompatible_are_known_until_they_comply():
    """`incompatible` names signers whose own valid messages are refused for their config
    (what node start's final wait skips), not those refused for freshness or bounds, and
    forgets one whose next message is compatible (restarted with our config)."""
    intake = _intake()
    intake.enter(0)
    kp = create_new_key_pair()
    other_rank, stale, big = create_new_key_pair(), create_new_key_pair(), create_new_key_pair()
    sender, data = _manifest(0, kp, lora={**LORA, "rank": 8})
    intake.on_gossip(sender, data)
    intake.on_gossip(*_manifest(0, other_rank, rule="median"))
    intake.on_gossip(*_manifest(0, stale, issued_at=int(time.time()) - 7200))
    intake.on_gossip(*_manifest(0, big, payload_size=10_001))
    assert set(intake.incompatible) == {sender, peer_id_of(other_rank)}
    assert "LoRA config" in intake.incompatible[sender]
    intake.on_gossip(*_manifest(1, kp))              # compatible now
    assert set(intake.incompatible) == {peer_id_of(other_rank)}


def test_unverified_gossip_blames_the_author(caplog):
    caplog.set_level(logging.INFO, logger="bitswarm.federation.rounds.intake")
    intake = _intake()
    state = intake.enter(0)
    intake.on_gossip("author-1", b"BSWX junk")       # no round, no active round: only logged
    assert state.rejected == [] and "invalid gossip from author-1" in caplog.text
    sender, forged = _manifest(0, signer=create_new_key_pair())
    intake.on_gossip("author-2", forged)             # signed by another key than its sender's
    assert intake.buffered(0) == []
    assert state.rejected == [("author-2", f"bad signature for sender {sender}")]
    intake.open(0, B0)
    intake.on_gossip("author-3", b"BSWX junk")       # during round 0: filed under it
    assert state.rejected[1:] == [("author-3", "manifest has wrong magic b'BSWX'")]


def test_channel_hands_over_buffered_then_live_manifests_once():
    async def main():
        intake = _intake()
        intake.enter(0)
        early = _manifest(0)
        intake.on_gossip(*early)
        inbox = intake.open(0, B0)
        late = _manifest(0)
        intake.on_gossip(*late)
        intake.on_gossip(*late)                      # republished: not handed over twice
        intake.on_gossip(*_manifest(1))              # another round: buffered, not handed over
        intake.close(0)
        got = [m.manifest.sender async for m in inbox]
        assert got == [early[0], late[0]]
        intake.on_gossip(*_manifest(0))              # round 0 is over: ignored
        assert intake.buffered(0) == [] and len(intake.buffered(1)) == 1
    trio.run(main)


def test_relayable_is_the_gossip_validator():
    """What the transport may relay: verified, compatible, fresh manifests of the round just
    below the window or later; refusals are filed with their reason, nothing else is recorded."""
    intake = _intake()
    intake.enter(3)
    sender, good = _manifest(3)
    assert intake.relayable(sender, good)
    assert intake.buffered(3) == []                       # judging is not filing
    assert intake.relayable(*_manifest(2))                # a straggler's round: still relayed
    assert intake.relayable(*_manifest(1)) is IGNORE      # long past: refused, no penalty
    assert intake.relayable(*_manifest(9))                # far ahead: evidence of a head
    assert not intake.relayable("12D3KooWjunk", b"\x00not a manifest")
    bad_sender, wrong_swarm = _manifest(3, swarm="another swarm")
    assert not intake.relayable(bad_sender, wrong_swarm)
    state = intake.enter(3)
    reasons = [r for _, r in state.rejected]
    assert any("swarm" in r for r in reasons)     # (unattributable garbage is only logged)
    intake.on_gossip(sender, good)                        # delivery files the good one
    assert intake.buffered(3) == [sender]


@pytest.mark.parametrize("issued_at, needle", [(-4000, "stale"), (+1000, "future")])
def test_stale_or_future_manifests_are_refused(issued_at, needle):
    """Replay protection: a manifest signed an hour ago (an earlier run of the swarm) or far
    in the future is refused, at the validator and on delivery."""
    intake = _intake()
    state = intake.enter(0)
    sender, data = _manifest(0, issued_at=int(time.time()) + issued_at)
    assert not intake.relayable(sender, data)
    intake.on_gossip(sender, data)
    assert intake.buffered(0) == []
    assert any(p == sender and needle in r for p, r in state.rejected)


def test_updates_of_another_base_adapter_are_evidence_not_contributions():
    async def main():
        intake = _intake()
        state = intake.enter(0)
        other_base = hashlib.sha256(b"a fork").digest()
        fork_sender, fork = _manifest(0, base_adapter=other_base)
        ok_sender, ok = _manifest(0)
        intake.on_gossip(fork_sender, fork)
        intake.on_gossip(ok_sender, ok)
        inbox = intake.open(0, B0)
        intake.close(0)
        got = [m.manifest.sender async for m in inbox]
        assert got == [ok_sender]
        assert any(p == fork_sender and "trained from another adapter" in r
                   for p, r in state.rejected)
        # Both are claims in the swarm view: (round 0, their base).
        assert intake.view.support(0, other_base) == [fork_sender]
        assert intake.view.support(0, B0) == [ok_sender]
    trio.run(main)


def test_round_records_are_delivered_and_claim_the_new_adapter():
    async def main():
        intake = _intake()
        intake.enter(0)
        kps = [create_new_key_pair() for _ in range(2)]
        ups = [_manifest(0, kp=kp)[1] for kp in kps]
        new = hashlib.sha256(b"G_1").digest()
        rec = encode_record(swarm=SWARM, round=0, base_model=BASE, lora=LORA, rule="fedavg",
                            base_adapter=B0, new_adapter=new, issued_at=int(time.time()),
                            update_bytes=ups, key_pair=kps[0])
        inbox = intake.open(0, B0)
        intake.on_gossip(rec.proposer, rec.data)
        intake.on_gossip("12D3KooWrelayer", rec.data)     # adopted and republished by another
        intake.on_gossip(rec.proposer, rec.data)          # a repeat: not delivered again
        wrong_rule = encode_record(swarm=SWARM, round=0, base_model=BASE, lora=LORA,
                                   rule="median", base_adapter=B0, new_adapter=new,
                                   issued_at=int(time.time()), update_bytes=ups, key_pair=kps[1])
        assert not intake.relayable(wrong_rule.proposer, wrong_rule.data)
        intake.close(0)
        got = [x async for x in inbox]
        assert [type(x) for x in got] == [RecordSeen, RecordSeen]
        assert [x.author for x in got] == [rec.proposer, "12D3KooWrelayer"]
        assert got[0].record.contributors == sorted(peer_id_of(k) for k in kps)
        assert intake.view.support(1, new) == sorted([rec.proposer, "12D3KooWrelayer"])
        head = intake.view.head(exclude=ME)
        assert (head.round, head.digest) == (1, new)
    trio.run(main)


def test_a_proposers_own_claim_is_not_flipped_back_by_adopters_of_its_old_record():
    """P proposed record R (G_1 = new); later it moved to Q's record R' of the same round (a
    catch-up) and republishes R'. An adopter still republishing R claims R's adapter for
    itself, but not for P any more: P's own gossip says where it is."""
    async def main():
        intake = _intake()
        intake.enter(0)
        p_kp, q_kp = create_new_key_pair(), create_new_key_pair()
        ups = [_manifest(0, kp=kp)[1] for kp in (p_kp, q_kp)]
        new, other = (hashlib.sha256(x).digest() for x in (b"G_1 of P", b"G_1 of Q"))
        r_p, r_q = (encode_record(swarm=SWARM, round=0, base_model=BASE, lora=LORA,
                                  rule="fedavg", base_adapter=B0, new_adapter=d,
                                  issued_at=int(time.time()), update_bytes=ups, key_pair=kp)
                    for kp, d in ((p_kp, new), (q_kp, other)))
        p = r_p.proposer
        intake.on_gossip(p, r_p.data)                     # P's own record: P claims `new`
        assert intake.view.latest()[p] == (1, new)
        intake.on_gossip(p, r_q.data)                     # P now republishes Q's record
        assert intake.view.latest()[p] == (1, other)
        intake.on_gossip("12D3KooWadopter", r_p.data)     # an adopter of R republishes it
        assert intake.view.latest()[p] == (1, other)      # before: flipped back to `new`
        assert intake.view.latest()["12D3KooWadopter"] == (1, new)
        assert intake.view.support(1, other) == sorted([p, r_q.proposer])
    trio.run(main)


def test_a_record_naming_a_sender_off_the_allow_list_is_refused():
    allowed, outsider = create_new_key_pair(), create_new_key_pair()
    intake = _intake(allowed_senders=frozenset({peer_id_of(allowed)}))
    intake.enter(0)
    rec = encode_record(swarm=SWARM, round=0, base_model=BASE, lora=LORA, rule="fedavg",
                        base_adapter=B0, new_adapter=B0, issued_at=int(time.time()),
                        update_bytes=[_manifest(0, kp=k)[1] for k in (allowed, outsider)],
                        key_pair=allowed)
    assert not intake.relayable(rec.proposer, rec.data)
    intake.on_gossip(rec.proposer, rec.data)
    assert intake.view.head(exclude=ME) is None


def test_refused_manifests_take_no_sender_slot():
    """A flood of incompatible (here: wrong-swarm) manifests from fresh keys cannot fill the
    per-round sender slots that honest updates need."""
    intake = _intake()
    state = intake.enter(0)
    for _ in range(10):
        intake.on_gossip(*_manifest(0, swarm="flood"))
    honest = [_manifest(0) for _ in range(3)]
    for sender, data in honest:
        intake.on_gossip(sender, data)
    assert intake.buffered(0) == sorted(s for s, _ in honest)
    assert len(state.rejected) == 10
