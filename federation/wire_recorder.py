"""Plaintext wire recording, for privacy audits ("what exactly does this node send?").

With BITSWARM_RECORD_WIRE=<path> set, every plaintext byte this process writes to a libp2p
connection after the Noise handshake (yamux frames carrying gossip, pubsub control and our
payload streams) is appended to <path>, in write order, across all connections. The hook is
in `libp2p_compat` (Noise encrypt path). Handshake messages are not recorded.

BITSWARM_RECORD_WIRE_CIPHERTEXT=<path> (tests only) also appends the matching ciphertext, so
a test can show that what the recorder saw is plaintext and what went on the wire is not.

Writes are synchronous on the event loop: a debugging aid, not for production throughput.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import BinaryIO

log = logging.getLogger("bitswarm.federation.wire_recorder")

ENV_PLAINTEXT = "BITSWARM_RECORD_WIRE"
ENV_CIPHERTEXT = "BITSWARM_RECORD_WIRE_CIPHERTEXT"


class WireRecorder:
    """Appends plaintext (and optionally ciphertext) chunks to files; bytes counted in `*_bytes`."""

    def __init__(self, plaintext_path: str, ciphertext_path: str | None = None) -> None:
        self._lock = threading.Lock()  # encrypt may be called from more than one thread
        self._plain: BinaryIO = open(plaintext_path, "ab")  # noqa: SIM115 - lives for the process
        self._cipher: BinaryIO | None = open(ciphertext_path, "ab") if ciphertext_path else None  # noqa: SIM115
        self.plaintext_bytes = 0
        self.ciphertext_bytes = 0
        log.warning("recording plaintext wire bytes to %s (%s is set)", plaintext_path, ENV_PLAINTEXT)

    def record(self, plaintext: bytes, ciphertext: bytes) -> None:
        """Append one Noise message: plaintext to the record, ciphertext to the test file."""
        with self._lock:
            self._plain.write(plaintext)
            self._plain.flush()  # the file is read by other processes while we run
            self.plaintext_bytes += len(plaintext)
            if self._cipher is not None:
                self._cipher.write(ciphertext)
                self._cipher.flush()
                self.ciphertext_bytes += len(ciphertext)


_recorder: WireRecorder | None = None
_checked_env = False


def active() -> WireRecorder | None:
    """The process-wide recorder if BITSWARM_RECORD_WIRE is set (read once), else None."""
    global _recorder, _checked_env
    if not _checked_env:
        _checked_env = True
        path = os.environ.get(ENV_PLAINTEXT)
        if path:
            _recorder = WireRecorder(path, os.environ.get(ENV_CIPHERTEXT) or None)
    return _recorder
