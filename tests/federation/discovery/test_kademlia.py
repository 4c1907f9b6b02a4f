"""SwarmDHT with real libp2p transports on 127.0.0.1: two members of a swarm that know only a
bootstrap node (itself in another swarm) find and dial each other through DHT provider
records; a node of a third swarm is never taken for a member (DHT queries may still connect
to it: Kademlia lookups talk to whichever peers are closest to the key)."""
from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bitswarm.federation.discovery import SwarmDHT, rendezvous_key
from bitswarm.federation.transport import TransportConfig, open_transport


def test_rendezvous_key_is_a_sha256_multihash_per_swarm():
    k = rendezvous_key("docs")
    assert k.startswith("1220") and len(k) == 68
    assert k != rendezvous_key("docs2") and k == rendezvous_key("docs")


def test_members_known_only_through_a_bootstrap_find_each_other():
    async def main():
        async with AsyncExitStack() as stack:
            boot = await stack.enter_async_context(open_transport(
                create_new_key_pair(), TransportConfig(topic="lobby"),
                discovery=SwarmDHT([], "lobby")))
            addr = boot.listen_multiaddrs[0]

            finders = []

            async def member(swarm):
                finders.append(SwarmDHT([addr], swarm, fast_s=1.0))
                return await stack.enter_async_context(open_transport(
                    create_new_key_pair(), TransportConfig(topic=swarm), discovery=finders[-1]))
            a, b = await member("docs"), await member("docs")
            other = await member("elsewhere")
            with trio.fail_after(60):
                while b.peer_id not in a.connected_peers() or a.peer_id not in b.connected_peers():
                    await trio.sleep(0.1)
            # Connected directly, and subscribed to the same topic: a gossipsub mesh is possible.
            with trio.fail_after(10):
                while b.peer_id not in a.topic_peers():
                    await trio.sleep(0.1)
            # The provider records named them to each other (the DHT's own queries may have
            # connected them already); the other swarm's node is no member of ours.
            with trio.fail_after(20):
                while b.peer_id not in finders[0].found or a.peer_id not in finders[1].found:
                    await trio.sleep(0.1)
            await trio.sleep(3.0)                      # a few more lookups
            assert other.peer_id not in finders[0].found | finders[1].found
            assert other.peer_id not in a.topic_peers() + b.topic_peers()
            assert finders[2].found == set()
    trio.run(main)


def test_lookup_period_backs_off_once_enough_members_are_connected() -> None:
    from bitswarm.federation.discovery.kademlia import SATURATED_REFRESH_S
    dht = SwarmDHT([], "s", target_peers=8, fast_s=3.0, refresh_s=30.0)
    assert dht.wait_s(0) == 3.0                      # nobody yet: look again soon
    assert dht.wait_s(1) == dht.wait_s(7) == 30.0    # some members: keep looking for more
    assert dht.wait_s(8) == dht.wait_s(31) == SATURATED_REFRESH_S   # enough: renew the record
