"""Peer discovery, injected into the transport.

    base.py    Discovery (one method: run(dialer)), Dialer, DialError
    static.py  StaticPeers: a fixed dial list, redialed with backoff (the node's --peer)
"""
from .base import Dialer, DialError, Discovery
from .static import StaticPeers

__all__ = ["DialError", "Dialer", "Discovery", "StaticPeers"]
