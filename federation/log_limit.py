"""Rate-limited log lines for what peers can trigger at will (rejected updates, invalid gossip):
a hostile peer must not be able to fill the disk or drown the log, yet every distinct kind of
refusal still shows up.

Per key (e.g. "rejected: wrong swarm"): at most `burst` lines per `period_s` seconds; lines over
that are counted, and the first line of a later window says how many were suppressed. Keys are
bounded (`max_keys`, the stalest evicted), so varying the reason cannot grow memory.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, burst: int = 5, period_s: float = 10.0,
                 max_keys: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.burst, self.period_s, self.max_keys = logger, burst, period_s, max_keys
        self.clock = clock
        self._keys: OrderedDict[str, list] = OrderedDict()   # key -> [window start, lines, suppressed]

    def log(self, level: int, key: str, msg: str, *args) -> bool:
        """Log msg % args under `key` unless its budget is spent; returns whether it was."""
        now = self.clock()
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = [now, 0, 0]
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key)
        if now - st[0] >= self.period_s:
            if st[2]:
                self.logger.log(level, "%d more %r message(s) suppressed in %.0f s", st[2], key,
                                now - st[0])
            st[:] = [now, 0, 0]
        if st[1] >= self.burst:
            st[2] += 1
            return False
        st[1] += 1
        self.logger.log(level, msg, *args)
        return True


def reason_key(prefix: str, reason: str) -> str:
    """A bounded key for a refusal: its kind is the reason up to the first ':' (40 chars)."""
    return f"{prefix}: {reason.split(':', 1)[0][:40]}"
