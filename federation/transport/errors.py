"""Errors of the transport."""
from __future__ import annotations

from bitswarm.federation.discovery import DialError


class TransportError(Exception):
    """Base class of transport errors."""


class FetchError(TransportError):
    """A payload fetch failed. `reason` is one of: timeout, not_found, oversize, connection,
    protocol, remote_error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class ConnectError(TransportError, DialError):
    """Dialing a peer failed or timed out."""
