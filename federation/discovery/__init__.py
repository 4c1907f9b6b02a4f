"""Peer discovery, injected into the transport.

    base.py    Discovery (one method: run(dialer)), Dialer, DialError
    static.py  StaticPeers: a fixed dial list, redialed with backoff (the node's --peer)
    kademlia.py  SwarmDHT: bootstrap, then swarm members through DHT provider records
"""
from .base import Dialer, DialError, Discovery
from .kademlia import SwarmDHT, rendezvous_key
from .static import StaticPeers

__all__ = ["DialError", "Dialer", "Discovery", "StaticPeers", "SwarmDHT", "rendezvous_key"]
