"""PeerGuard and the libp2p 0.8.1 hooks that enforce it (libp2p_compat patches 6-10): two real
transports on 127.0.0.1 in one process, the attacker side writing what an honest py-libp2p
never would (raw yamux frames past the window, invalid gossip) through its real connection.
Each hook's test first pins the upstream behaviour it works around (it fails once upstream
changes, so the patch can be dropped)."""
from __future__ import annotations

import logging
import struct
from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from bitswarm.federation import libp2p_compat
from bitswarm.federation.transport import PAYLOAD_PROTOCOL_ID, TransportConfig, open_transport
from bitswarm.federation.transport.peer_guard import (LOG_BURST, GuardLimits, PeerGuard,
                                                      TokenBucket, score_params)

TOPIC = "guard-test"
WAIT_S = 10


async def _pair(stack: AsyncExitStack, victim_limits: GuardLimits | None = None, n_others: int = 1):
    victim = await stack.enter_async_context(open_transport(
        create_new_key_pair(), TransportConfig(topic=TOPIC, limits=victim_limits or GuardLimits())))
    addr = victim.listen_multiaddrs[0]
    others = [await stack.enter_async_context(open_transport(create_new_key_pair(), TransportConfig(topic=TOPIC)))
              for _ in range(n_others)]
    return victim, addr, others


async def _wait(predicate, what: str, timeout_s: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


def _conns(transport, peer_id: str) -> list:
    return transport.libp2p_host.get_network().get_connections(ID.from_base58(peer_id))


def _conn_to(transport, peer_id: str):  # type: ignore[no-untyped-def]
    conns = _conns(transport, peer_id)
    return conns[0] if conns else None


async def _push_past_window(attacker, victim_id: str, total: int) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    """Open a payload stream, send a request, then write raw DATA frames (16 KiB each) for
    `total` bytes, ignoring the window. -> (the attacker's Yamux, stream id)."""
    from libp2p.stream_muxer.yamux.yamux import TYPE_DATA, YAMUX_HEADER_FORMAT

    stream = await attacker.libp2p_host.new_stream(ID.from_base58(victim_id), [PAYLOAD_PROTOCOL_ID])
    await stream.write(struct.pack(">I", 4) + b"junk")
    yamux, sid = stream.muxed_conn, stream.muxed_stream.stream_id
    frame = b"\x00" * 16384
    sent = 0
    try:
        while sent < total:
            await yamux._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, sid, len(frame)) + frame)
            sent += len(frame)
    except Exception:  # noqa: BLE001 - the victim hung up: the point of the test
        pass
    return yamux, sid


def test_yamux_window_upstream_buffers_past_it_and_we_close_the_connection() -> None:
    from libp2p.stream_muxer.yamux.yamux import Yamux

    from bitswarm.federation.libp2p_compat import YAMUX_MAX_WINDOW

    libp2p_compat.apply()

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            victim, addr, (attacker,) = await _pair(stack)
            # Upstream 0.8.1 (our stream buffers switched off): 8 MiB on a stream whose window
            # is at most 4 MiB are all buffered and the connection stays up. If this fails,
            # upstream enforces the window: drop patch 6.
            patched = Yamux.__init__
            Yamux.__init__ = libp2p_compat.ORIGINALS["Yamux.__init__"]
            try:
                await attacker.connect(addr)
                await _push_past_window(attacker, victim.peer_id, 8 << 20)
                conn = _conn_to(victim, attacker.peer_id)
                await _wait(lambda: max(map(len, conn.muxed_conn.stream_buffers.values()), default=0)
                            >= 8 << 20, "upstream buffering past the window")
                assert not conn.muxed_conn.is_closed
            finally:
                Yamux.__init__ = patched
            await attacker.libp2p_host.disconnect(ID.from_base58(victim.peer_id))
            await _wait(lambda: conn not in _conns(victim, attacker.peer_id), "disconnect")

            # Patched: the connection is closed at the first frame past the window, having
            # buffered at most the window; the victim goes on serving.
            await attacker.connect(addr)
            conn = _conn_to(victim, attacker.peer_id)
            await _push_past_window(attacker, victim.peer_id, 8 << 20)
            assert max(map(len, conn.muxed_conn.stream_buffers.values()), default=0) <= YAMUX_MAX_WINDOW
            await _wait(lambda: conn.muxed_conn.is_closed, "the victim closing the connection")
            await _wait(lambda: conn not in _conns(victim, attacker.peer_id), "connection removed")
            await _wait(lambda: not _conns(attacker, victim.peer_id), "the attacker noticing")
            victim.set_payload_provider(lambda req: b"ok" if req == b"r" else None)
            await attacker.connect(addr)
            assert await attacker.fetch(victim.peer_id, b"r", max_bytes=10, timeout_s=WAIT_S) == b"ok"

    trio.run(scenario)


async def _open_streams(attacker, victim_id: str, n: int) -> list:  # type: ignore[no-untyped-def]
    """Open n payload streams that send nothing (each holds a handler task on the victim)."""
    opened = []
    for _ in range(n):
        try:
            with trio.fail_after(WAIT_S):
                opened.append(await attacker.libp2p_host.new_stream(ID.from_base58(victim_id),
                                                                    [PAYLOAD_PROTOCOL_ID]))
        except Exception:  # noqa: BLE001 - reset by the victim
            pass
    return opened


def test_inbound_streams_upstream_unbounded_and_we_cap_them() -> None:
    from libp2p.network.connection.swarm_connection import SwarmConn

    libp2p_compat.apply()

    def handlers(conn) -> int:  # type: ignore[no-untyped-def]
        return sum(1 for s in conn.get_streams() if s.get_protocol() == PAYLOAD_PROTOCOL_ID)

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            victim, addr, (attacker,) = await _pair(stack, GuardLimits(max_inbound_streams_per_conn=8))
            await attacker.connect(addr)
            conn = _conn_to(victim, attacker.peer_id)
            # Upstream 0.8.1: every inbound stream is accepted (only outbound ones are capped,
            # at 256). If this fails, upstream caps them: drop patch 7.
            patched = SwarmConn._handle_muxed_stream
            SwarmConn._handle_muxed_stream = libp2p_compat.ORIGINALS["SwarmConn._handle_muxed_stream"]
            try:
                held = await _open_streams(attacker, victim.peer_id, 12)
                await _wait(lambda: handlers(conn) >= 12, "12 upstream stream handlers")
            finally:
                SwarmConn._handle_muxed_stream = patched
            for stream in held:
                await stream.reset()
            await _wait(lambda: handlers(conn) == 0, "the streams gone")
            # Patched: at most 8 are held, the rest reset on arrival.
            held = await _open_streams(attacker, victim.peer_id, 12)
            await _wait(lambda: getattr(conn, "_bitswarm_inbound", 0) >= 8, "8 streams held")
            await trio.sleep(0.3)
            assert conn._bitswarm_inbound <= 8 and handlers(conn) <= 8

    trio.run(scenario)


def test_connection_gate_refuses_over_the_per_ip_limit_and_blocked_peers() -> None:
    libp2p_compat.apply()

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            victim, addr, (a, b) = await _pair(stack, GuardLimits(max_conns_per_ip=1), n_others=2)
            await a.connect(addr)
            await _wait(lambda: _conn_to(victim, a.peer_id) is not None, "a's connection")
            try:
                await b.connect(addr)       # the dialer may see success before the close
            except Exception:  # noqa: BLE001
                pass
            await trio.sleep(0.5)
            assert _conn_to(victim, b.peer_id) is None
            assert victim.guard.refused_connections >= 1
            # A blocked peer is disconnected and cannot come back.
            victim.guard.block(a.peer_id, "test")
            await _wait(lambda: _conn_to(victim, a.peer_id) is None, "a disconnected")
            try:
                await a.connect(addr)
            except Exception:  # noqa: BLE001
                pass
            await trio.sleep(0.5)
            assert _conn_to(victim, a.peer_id) is None and victim.blocked_peers() == [a.peer_id]

    trio.run(scenario)


def test_a_forwarder_of_invalid_gossip_is_scored_down_and_blocked(caplog) -> None:
    libp2p_compat.apply()

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            victim, addr, (attacker, honest) = await _pair(stack, n_others=2)
            victim.set_gossip_validator(lambda author, data: data.startswith(b"good"))
            await attacker.connect(addr)
            await honest.connect(addr)
            await victim.wait_for_topic_peers(2, timeout_s=WAIT_S)
            await honest.wait_for_topic_peers(1, timeout_s=WAIT_S)
            await attacker.wait_for_topic_peers(1, timeout_s=WAIT_S)
            for i in range(60):
                try:
                    await attacker.publish(b"bad %d" % i)
                except Exception:  # noqa: BLE001 - disconnected midway
                    break
                await trio.sleep(0.005)
            await _wait(lambda: attacker.peer_id in victim.blocked_peers(), "the attacker blocked")
            await _wait(lambda: _conn_to(victim, attacker.peer_id) is None, "the attacker disconnected")
            # The honest peer is untouched and still heard.
            await honest.publish(b"good news")
            with trio.fail_after(WAIT_S):
                msg = await victim.messages().receive()
            assert msg.data == b"good news" and honest.peer_id not in victim.blocked_peers()

    with caplog.at_level(logging.INFO, logger="bitswarm.federation.transport"):
        trio.run(scenario)
    lines = [r for r in caplog.records if "blocked for" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]      # one line per decision


def test_token_bucket_and_rate_limit_decisions_are_bounded(caplog) -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(5)) and not bucket.take(1, 0.0)
    assert bucket.take(1, 0.1) and not bucket.take(1, 0.1)            # 10/s refills 1 per 0.1 s
    guard = PeerGuard(GuardLimits(gossip_msgs_per_s=1, gossip_msgs_burst=2), topic=TOPIC,
                      clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="bitswarm.federation.transport"):
        peers = [str(ID.from_pubkey(create_new_key_pair().public_key)) for _ in range(3 * LOG_BURST)]
        admitted = sum(guard.admit_message(p, 100) for p in peers for _ in range(50))
    assert admitted == 2 * len(peers) and guard.dropped_over_rate == 48 * len(peers)
    over = [r for r in caplog.records if "over the gossip rate" in r.getMessage()]
    assert len(over) == LOG_BURST             # not one per peer beyond the burst, not one per message


def test_score_params_are_set_and_limits_validated() -> None:
    from libp2p.pubsub.score import ScoreParams

    # Upstream 0.8.1 scores nobody: every weight 0, every threshold -inf. If this fails,
    # upstream ships real defaults: compare them with ours.
    up = ScoreParams()
    assert up.p4_invalid_messages.weight == up.p5_behavior_penalty_weight == 0
    assert up.graylist_threshold == up.publish_threshold == float("-inf")
    p = score_params()
    assert p.graylist_threshold < p.publish_threshold < p.gossip_threshold < 0
    assert p.p4_invalid_messages.weight > 0 and p.p5_behavior_penalty_weight > 0
    with pytest.raises(ValueError):
        GuardLimits(gossip_msgs_per_s=0)
    with pytest.raises(ValueError):
        GuardLimits(max_conns_per_ip=0)
