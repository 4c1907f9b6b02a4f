"""Peer discovery, injected into the transport.

    base.py    Discovery (one method: run(dialer)), Dialer, DialError
    static.py  StaticPeers: a fixed dial list, redialed with backoff (the node's --peer)
    kademlia.py  SwarmDHT: bootstrap, then swarm members through DHT provider records
    mdns.py    LanPeers: swarm members on the LAN through mDNS; AllOf: several side by side
"""
from .base import Dialer, DialError, Discovery
from .kademlia import SwarmDHT, rendezvous_key
from .mdns import AllOf, LanPeers, lan_fingerprint
from .static import StaticPeers

__all__ = ["AllOf", "DialError", "Dialer", "Discovery", "LanPeers", "StaticPeers", "SwarmDHT",
           "lan_fingerprint", "rendezvous_key"]
