"""Every libp2p 0.8.1 workaround pinned: each test exercises the ORIGINAL upstream behaviour
(and fails once upstream changes), then our guard."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import trio

from bitswarm.federation import libp2p_compat
from bitswarm.federation.identity import load_or_create_identity
from bitswarm.federation.transport import MAX_GOSSIP_BYTES, TransportConfig

TOPIC = "bitswarm-test"


# ---- libp2p 0.8.1 compat: pin the upstream behaviour each patch works around ---------------


def test_compat_requires_pinned_version() -> None:
    assert libp2p_compat.installed_libp2p_version() == libp2p_compat.SUPPORTED_LIBP2P_VERSION
    libp2p_compat.check_version()  # does not raise on the pinned version


class _FakeStream:
    """Just enough of INetStream for Pubsub.continuously_read_stream."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.muxed_conn = types.SimpleNamespace(peer_id="hostile")
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        n = len(self._data) if n is None else n
        out, self._data = self._data[:n], self._data[n:]
        return out

    async def reset(self) -> None:
        self.was_reset = True


def _bare_pubsub():  # type: ignore[no-untyped-def]
    from libp2p.pubsub.pubsub import Pubsub

    pubsub = object.__new__(Pubsub)  # no host/service needed to reach the decode step
    pubsub.max_inbound_rpc_size = 1 << 20
    pubsub._manager = types.SimpleNamespace(is_running=True)
    pubsub.dead = []
    pubsub._handle_dead_peer = pubsub.dead.append
    return pubsub


def test_upstream_pubsub_dies_on_garbage_frame_and_guard_survives() -> None:
    from google.protobuf.message import DecodeError
    from libp2p.pubsub.pubsub import Pubsub

    libp2p_compat.apply()
    frame = bytes([16]) + b"\xff" * 16  # valid length, body is no protobuf
    pubsub = _bare_pubsub()
    original = libp2p_compat.ORIGINALS["Pubsub.stream_handler"]

    # Upstream 0.8.1: DecodeError escapes the stream handler (and so kills the process).
    # If this fails, upstream fixed it: drop the patch in libp2p_compat.
    with pytest.raises(DecodeError):
        trio.run(original, pubsub, _FakeStream(frame))

    stream = _FakeStream(frame)
    trio.run(Pubsub.stream_handler, pubsub, stream)  # patched: returns normally
    assert stream.was_reset and pubsub.dead == ["hostile"]


def test_upstream_signature_validator_raises_on_bad_key_and_guard_drops() -> None:
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.validators import signature_validator

    # from_id is not an identity multihash, so the key must come from msg.key, which is junk.
    msg = rpc_pb2.Message(data=b"x", topicIDs=[TOPIC], from_id=b"\x12\x20" + b"\x00" * 32, seqno=b"1",
                          signature=b"s" * 64, key=b"\xff\xff junk")
    # Upstream 0.8.1 re-raises; push_msg does not catch it. If this fails, drop that patch.
    with pytest.raises(Exception):  # noqa: B017 - the exact protobuf error type varies
        signature_validator(msg)
    assert "Pubsub.push_msg" in libp2p_compat.ORIGINALS


def test_upstream_noise_encrypt_is_the_transport_write_path() -> None:
    # The wire recorder hooks NoiseTransportReadWriter.encrypt; it must still be the method
    # BaseNoiseMsgReadWriter.write_msg calls for every transport message.
    import inspect

    from libp2p.security.noise.io import BaseNoiseMsgReadWriter, NoiseTransportReadWriter

    libp2p_compat.apply()
    assert "self.encrypt(" in inspect.getsource(BaseNoiseMsgReadWriter.write_msg)
    assert NoiseTransportReadWriter.encrypt is not libp2p_compat.ORIGINALS["NoiseTransportReadWriter.encrypt"]


def test_upstream_tcp_listeners_share_a_port_and_we_refuse_it(tmp_path: Path) -> None:
    from libp2p.transport.tcp.tcp import _open_reuseport_listeners

    from bitswarm.federation.transport import open_transport

    async def scenario() -> None:
        first = await _open_reuseport_listeners("127.0.0.1", 0)
        port = first[0].socket.getsockname()[1]
        # Upstream 0.8.1 binds with SO_REUSEPORT: a second listener on the same port succeeds.
        # If this fails, upstream stopped doing that; ensure_tcp_port_free can go.
        second = await _open_reuseport_listeners("127.0.0.1", port)
        assert len(second) == 1
        for listener in first + second:
            await listener.aclose()
        blocker = await _open_reuseport_listeners("127.0.0.1", port)
        kp = load_or_create_identity(tmp_path)
        with pytest.raises(OSError, match="already in use"):
            async with open_transport(kp, TransportConfig(topic=TOPIC, listen=f"/ip4/127.0.0.1/tcp/{port}")):
                pass
        await blocker[0].aclose()

    trio.run(scenario)


def test_gossip_size_limit_is_below_upstream_silent_drop() -> None:
    from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize

    # py-libp2p drops outbound RPCs above this silently; our limit must stay well below it.
    assert MAX_GOSSIP_BYTES * 2 <= DefaultMaxMessageSize
    with pytest.raises(ValueError):
        TransportConfig(topic="")
    with pytest.raises(ValueError):
        TransportConfig(topic=TOPIC, psk="zz")


def _rpc_with_sender_record():  # type: ignore[no-untyped-def]
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.peer.peerstore import create_signed_peer_record
    from libp2p.pubsub.pb import rpc_pb2
    from multiaddr import Multiaddr

    keys = create_new_key_pair()
    peer_id = ID.from_pubkey(keys.public_key)
    envelope = create_signed_peer_record(peer_id, [Multiaddr("/ip4/127.0.0.1/tcp/4001")],
                                         keys.private_key)
    rpc = rpc_pb2.RPC()
    rpc.senderRecord = envelope.marshal_envelope()
    return rpc, peer_id


def test_upstream_verifies_every_sender_record_and_we_verify_each_record_once(monkeypatch) -> None:
    import libp2p.pubsub.gossipsub as gossipsub_module
    import libp2p.pubsub.pubsub as pubsub_module
    import libp2p.pubsub.utils as utils

    libp2p_compat.apply()
    verifications = []
    real = utils.consume_envelope
    monkeypatch.setattr(utils, "consume_envelope",
                        lambda *a, **k: verifications.append(1) or real(*a, **k))
    host = types.SimpleNamespace(get_peerstore=lambda: types.SimpleNamespace(
        consume_peer_record=lambda envelope, ttl: True))
    rpc, peer_id = _rpc_with_sender_record()
    original = libp2p_compat.ORIGINALS["pubsub.maybe_consume_signed_record"]
    assert original(rpc, host, peer_id) and original(rpc, host, peer_id)
    assert len(verifications) == 2                      # upstream: parsed and verified per RPC

    verifications.clear()
    assert pubsub_module.maybe_consume_signed_record is gossipsub_module.maybe_consume_signed_record
    consume = pubsub_module.maybe_consume_signed_record
    assert consume(rpc, host, peer_id) and consume(rpc, host, peer_id) and consume(rpc, host, peer_id)
    assert len(verifications) == 1                      # ours: once per (peer, record bytes)

    # Other bytes are verified afresh: a record signed by someone else is refused every time.
    forged, _ = _rpc_with_sender_record()
    assert not consume(forged, host, peer_id) and not consume(forged, host, peer_id)
    assert len(verifications) == 3
    assert consume(rpc, host, peer_id) and len(verifications) == 3


def test_upstream_yamux_releases_credit_on_every_read_and_we_default_it_off(monkeypatch) -> None:
    import libp2p.stream_muxer.yamux.yamux as yamux_module

    monkeypatch.delenv("PY_YAMUX_RELEASE_ON_READ", raising=False)
    assert yamux_module._yamux_release_on_read()        # upstream default: a WINDOW_UPDATE per read
    libp2p_compat._batch_yamux_credit()
    assert not yamux_module._yamux_release_on_read()    # ours: credit back at half the window
    monkeypatch.setenv("PY_YAMUX_RELEASE_ON_READ", "1")
    libp2p_compat._batch_yamux_credit()                 # an explicit setting wins
    assert yamux_module._yamux_release_on_read()


def test_upstream_rebuilds_our_address_set_per_rpc_and_we_reuse_it_briefly(monkeypatch) -> None:
    import libp2p.pubsub.gossipsub as gossipsub_module
    import libp2p.pubsub.pubsub as pubsub_module
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair

    libp2p_compat.apply()
    host = new_host(key_pair=create_new_key_pair())
    calls = []
    real = host.get_addrs
    monkeypatch.setattr(host, "get_addrs", lambda: calls.append(1) or real())
    original = libp2p_compat.ORIGINALS["pubsub.env_to_send_in_RPC"]
    first, _ = original(host)
    assert original(host)[0] == first and len(calls) == 2       # upstream: per RPC

    calls.clear()
    assert pubsub_module.env_to_send_in_RPC is gossipsub_module.env_to_send_in_RPC
    ours = pubsub_module.env_to_send_in_RPC
    clock = [100.0]
    monkeypatch.setattr(libp2p_compat.time, "monotonic", lambda: clock[0])
    assert ours(host)[0] == first and ours(host)[0] == first and len(calls) == 1
    clock[0] += libp2p_compat.SPR_REUSE_S                       # then checked again
    assert ours(host)[0] == first and len(calls) == 2


def test_upstream_sends_idontwant_for_every_message_and_we_only_for_large_ones() -> None:
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12, GossipSub

    libp2p_compat.apply()
    gs = object.__new__(GossipSub)
    gs.mesh = {TOPIC: {"peer-a", "peer-b"}}
    gs.peer_protocol = {"peer-a": PROTOCOL_ID_V12, "peer-b": PROTOCOL_ID_V12}
    gs.pubsub = object()                                 # attached (no host needed here)
    sent = []

    async def emit_idontwant(msg_ids, to_peer):  # type: ignore[no-untyped-def]
        sent.append(to_peer)
    gs.emit_idontwant = emit_idontwant
    upstream = libp2p_compat.ORIGINALS["GossipSub._emit_idontwant_for_message"]

    async def main() -> None:
        token = libp2p_compat._PUBLISHING_BYTES.set(40)         # a 40-byte message
        try:
            await upstream(gs, b"id", [TOPIC])
            assert sorted(sent) == ["peer-a", "peer-b"]         # upstream: whatever the size
            sent.clear()
            await gs._emit_idontwant_for_message(b"id", [TOPIC])
            assert sent == []                                   # ours: not for a small one
        finally:
            libp2p_compat._PUBLISHING_BYTES.reset(token)
        token = libp2p_compat._PUBLISHING_BYTES.set(libp2p_compat.IDONTWANT_MIN_BYTES)
        try:
            await gs._emit_idontwant_for_message(b"id", [TOPIC])
            assert sorted(sent) == ["peer-a", "peer-b"]         # a large one still gets it
        finally:
            libp2p_compat._PUBLISHING_BYTES.reset(token)
    trio.run(main)
    assert GossipSub.publish is not libp2p_compat.ORIGINALS["GossipSub.publish"]


def test_upstream_scores_every_refusal_and_an_ignored_message_costs_nothing() -> None:
    from libp2p.pubsub.score import PeerScorer, ScoreParams

    libp2p_compat.apply()
    scorer = PeerScorer(ScoreParams())
    upstream = libp2p_compat.ORIGINALS["PeerScorer.on_invalid_message"]
    upstream(scorer, "peer", TOPIC)
    assert scorer.invalid_messages["peer"][TOPIC] == 1.0          # upstream: every refusal

    async def refuse(ignore: bool) -> None:                      # one pubsub task per message
        if ignore:
            libp2p_compat.ignore_current_message()
        scorer.on_invalid_message("peer", TOPIC)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(refuse, True)
        assert scorer.invalid_messages["peer"][TOPIC] == 1.0      # ignored: no penalty
        async with trio.open_nursery() as n:
            n.start_soon(refuse, False)                          # the flag was that task's only
        assert scorer.invalid_messages["peer"][TOPIC] == 2.0
    trio.run(main)
