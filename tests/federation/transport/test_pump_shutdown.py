"""The gossip pump at shutdown: a message that subscription.get() already returned when the
transport closed its channel ends the pump quietly (it crashed `node start` with exit 1 after a
successful 32-node run: ClosedResourceError from send_nowait)."""
from __future__ import annotations

from types import SimpleNamespace

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from bitswarm.federation.transport.host import Transport


def test_a_message_arriving_as_the_channel_closes_ends_the_pump():
    me, author = (ID.from_pubkey(create_new_key_pair().public_key) for _ in range(2))

    class Subscription:
        def __init__(self):
            self.n = 0

        async def get(self):
            self.n += 1
            await trio.lowlevel.checkpoint()
            return SimpleNamespace(from_id=author.to_bytes(), data=b"late message")

    async def main():
        send, recv = trio.open_memory_channel(4)
        send.close()                                   # the transport shut down
        fake = SimpleNamespace(_id=me, _msg_send=send, bytes_received=0, _dropped_messages=0)
        sub = Subscription()
        with trio.fail_after(5):
            await Transport._pump_messages(fake, sub)  # returns instead of raising
        assert sub.n == 1 and fake.bytes_received == len(b"late message")
    trio.run(main)
