"""A hostile peer process: dials a node with Noise + Yamux (a legitimate handshake), then opens
gossipsub streams to it and writes malformed frames. One JSON line per attack on stdout, then
{"event": "done"}.

Usage: python helpers_fed_hostile.py <node_multiaddr> <topic>

Attacks, each on a fresh /meshsub/1.1.0 stream:
  bad_key_publish: a well-formed RPC publishing a message whose `from` is a SHA-256 peer ID and
                  whose `key` is junk (upstream: signature_validator raises inside push_msg)
Then, each answered by the node resetting the stream:
  garbage_body:   a valid varint length followed by bytes that are no RPC protobuf
                  (upstream: uncaught protobuf DecodeError -> the node process dies)
  garbage_varint: ten 0xff bytes, a length prefix that never terminates
  oversized:      a length prefix of 64 MiB (over the node's inbound cap) and some bytes
"""

from __future__ import annotations

import json
import sys

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.utils.varint import encode_uvarint

from bitswarm.federation.transport import muxer_options, security_options

ATTACKS = {
    "garbage_body": encode_uvarint(16) + b"\xff" * 16,
    "garbage_varint": b"\xff" * 10 + b"\x01",
    "oversized": encode_uvarint(64 * 1024 * 1024) + b"\x00" * 1024,
}


def bad_key_publish(topic: str) -> bytes:
    msg = rpc_pb2.Message(
        data=b"x", topicIDs=[topic], from_id=b"\x12\x20" + b"\x01" * 32, seqno=b"\x00" * 8,
        signature=b"s" * 64, key=b"\xff\xff junk",
    )
    body = rpc_pb2.RPC(publish=[msg]).SerializeToString()
    return encode_uvarint(len(body)) + body


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def main(target: str, topic: str) -> None:
    key_pair = create_new_key_pair()
    host = new_host(key_pair=key_pair, sec_opt=security_options(key_pair), muxer_opt=muxer_options())
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(10):
            await host.connect(info)
        emit(event="connected", peer_id=host.get_id().to_base58())
        with trio.fail_after(10):
            stream = await host.new_stream(info.peer_id, [PROTOCOL_ID_V11])
            await stream.write(bad_key_publish(topic))
            await trio.sleep(0.5)  # a valid RPC: the node keeps the stream; give it time to process
            await stream.reset()
        emit(event="attack", name="bad_key_publish", outcome="sent")
        for name, frame in ATTACKS.items():
            with trio.fail_after(10):
                stream = await host.new_stream(info.peer_id, [PROTOCOL_ID_V11])
                await stream.write(frame)
                # The node answers a rejected frame by resetting the stream: wait for that.
                outcome = "open"
                with trio.move_on_after(3):
                    try:
                        while await stream.read(65536):
                            pass  # the node's hello/subscription frames
                        outcome = "eof"
                    except Exception as e:  # StreamReset and friends
                        outcome = type(e).__name__
            emit(event="attack", name=name, outcome=outcome)
        emit(event="done")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
