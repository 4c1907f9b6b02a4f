"""A bitswarm transport node in its own process, driven over stdin/stdout (JSON lines).

Usage: python helpers_fed_node.py <data_dir> <topic> [peer_multiaddr ...]

stdout events: {"event": "ready", "peer_id", "addrs"}, {"event": "gossip", "from", "data"},
{"event": "published"}, {"event": "served", "key", "sha256"}, {"event": "fetched", "len",
"sha256"}, {"event": "fetch_error", "reason"}, {"event": "peers", "peers"}, {"event": "error",
"message"}.
stdin commands: {"cmd": "publish", "data"}, {"cmd": "serve", "key", "size", "marker"?},
{"cmd": "fetch", "peer", "key", "max_bytes", "timeout_s"}, {"cmd": "wait_topic_peers", "n"},
{"cmd": "quit"}. Strings are UTF-8 text; payloads are deterministic bytes of the given size,
with an optional marker string embedded at offset 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import trio

from bitswarm.federation.identity import load_or_create_identity
from bitswarm.federation.transport import FetchError, TransportConfig, open_transport


def make_payload(size: int, marker: str = "") -> bytes:
    """Deterministic pseudo-random payload of `size` bytes (SHA-256 counter stream)."""
    head = marker.encode()
    blocks = bytearray(head)
    counter = 0
    while len(blocks) < size:
        blocks += hashlib.sha256(counter.to_bytes(8, "big")).digest() * 64  # 2 KiB per step
        counter += 1
    return bytes(blocks[:size])


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def run(data_dir: Path, topic: str, peers: list[str]) -> None:
    key_pair = load_or_create_identity(data_dir)
    payloads: dict[bytes, bytes] = {}
    config = TransportConfig(topic=topic, peers=peers)
    async with open_transport(key_pair, config) as transport, trio.open_nursery() as nursery:
        transport.set_payload_provider(payloads.get)
        emit(event="ready", peer_id=transport.peer_id, addrs=transport.listen_multiaddrs)

        async def relay_gossip() -> None:
            async for msg in transport.messages():
                emit(event="gossip", **{"from": msg.from_peer}, data=msg.data.decode(errors="replace"))

        nursery.start_soon(relay_gossip)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                break  # the test went away: shut down
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                if cmd["cmd"] == "quit":
                    nursery.cancel_scope.cancel()
                    return
                nursery.start_soon(handle, transport, payloads, cmd)
        nursery.cancel_scope.cancel()


async def handle(transport, payloads: dict[bytes, bytes], cmd: dict) -> None:  # type: ignore[no-untyped-def]
    try:
        if cmd["cmd"] == "publish":
            await transport.publish(cmd["data"].encode())
            emit(event="published")
        elif cmd["cmd"] == "serve":
            payload = make_payload(cmd["size"], cmd.get("marker", ""))
            payloads[cmd["key"].encode()] = payload
            emit(event="served", key=cmd["key"], sha256=hashlib.sha256(payload).hexdigest())
        elif cmd["cmd"] == "fetch":
            try:
                data = await transport.fetch(
                    cmd["peer"], cmd["key"].encode(), max_bytes=cmd["max_bytes"], timeout_s=cmd["timeout_s"]
                )
                emit(event="fetched", len=len(data), sha256=hashlib.sha256(data).hexdigest())
            except FetchError as e:
                emit(event="fetch_error", reason=e.reason, message=str(e))
        elif cmd["cmd"] == "wait_topic_peers":
            emit(event="peers", peers=await transport.wait_for_topic_peers(cmd["n"], timeout_s=15))
        else:
            emit(event="error", message=f"unknown command {cmd['cmd']!r}")
    except Exception as e:  # report to the test instead of dying silently
        emit(event="error", message=f"{type(e).__name__}: {e}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("bitswarm").setLevel(logging.INFO)
    data_dir, topic, *peers = sys.argv[1:]
    trio.run(run, Path(data_dir), topic, peers)


if __name__ == "__main__":
    main()
