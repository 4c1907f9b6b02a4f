"""One `node start` per data dir: an exclusive advisory lock (flock) on `<data-dir>/node.lock`,
held for the process's life; the file names the holder's PID. The kernel drops the lock when the
process dies, kill -9 included, so a stale file never blocks a restart."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "node.lock"
_held: list[int] = []     # fds kept open (and so locked) until the process exits


def lock_data_dir(data_dir: Path) -> None:
    """Take the data dir's lock or raise ValueError naming the PID that holds it."""
    path = Path(data_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"--data-dir {data_dir}: in use by another node (PID {holder}); stop "
                         f"it first, or give this node its own --data-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held.append(fd)
