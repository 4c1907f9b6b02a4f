"""libp2p transport of a bitswarm node: gossip on one topic plus a bulk payload protocol.

Stack: TCP, Noise only (py-libp2p's default also accepts secio and PLAINTEXT), Yamux only,
GossipSub (StrictSign) with a ~1 s heartbeat. Gossip carries small signed messages; payloads
(tens of MB) move over our own stream protocol `/bitswarm/payload/1.0.0`.

    config.py            TransportConfig
    errors.py            TransportError, FetchError, ConnectError
    payload_protocol.py  /bitswarm/payload/1.0.0: framing, fetch client, PayloadServer
    nat.py               NatTraversal: circuit relay v2 (HOP with relay=True), AutoNAT, DCUtR
    peer_guard.py        GuardLimits, PeerGuard: gossip rate limits, gossipsub peer scoring,
                         blocking offenders, connection and stream limits (enforced through
                         the hooks in federation/libp2p_compat.py)
    host.py              Transport (gossip, peers, payloads) and open_transport, which runs
                         the injected discovery (bitswarm.federation.discovery)
"""
from .config import TransportConfig
from .peer_guard import GuardLimits
from .errors import ConnectError, FetchError, TransportError
from .host import (IGNORE, MAX_GOSSIP_BYTES, GossipMessage, Transport, muxer_options, open_transport,
                   security_options)
from .payload_protocol import PAYLOAD_PROTOCOL_ID

__all__ = ["IGNORE", "MAX_GOSSIP_BYTES", "PAYLOAD_PROTOCOL_ID", "ConnectError", "FetchError",
           "GossipMessage", "GuardLimits", "Transport", "TransportConfig", "TransportError", "muxer_options",
           "open_transport", "security_options"]
