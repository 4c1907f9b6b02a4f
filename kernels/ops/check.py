"""check: the launchers' argument check (a ValueError naming the op and the shapes)."""
from __future__ import annotations


def check(cond: bool, msg: str) -> None:
    """Raise ValueError(msg) unless cond."""
    if not cond:
        raise ValueError(msg)
