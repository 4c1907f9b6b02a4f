"""Crash-safe file writes shared by checkpoints, adapters and exports (POSIX rename semantics).

A reader never sees a half-written file or folder: data goes to a temp name beside the target,
is fsync'd, then renamed over it, and the parent folder is fsync'd so the rename survives a crash.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory (makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `.NAME.tmp-XXXX` beside `path`, fsync, then os.replace onto `path`."""
    path = Path(path)
    # os.open with 0o666 (not mkstemp's 0o600) so the file gets the usual umask permissions.
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir_atomic(target: Path, fill: Callable[[Path], None]) -> None:
    """Replace folder `target` by one that `fill(tmp)` writes (fill must fsync its files).

    Protocol (P = target's parent, D = its name, XXXX random):
      1. fill P/.D.tmp-XXXX, fsync it;  2. if D exists, rename D -> P/.D.old-XXXX;
      3. rename P/.D.tmp-XXXX -> D, fsync P;  4. remove P/.D.old-XXXX.
    A crash leaves either D complete, or no D and a complete .D.old-XXXX beside it (readers may
    fall back to it; node/checkpoints.py does). A failing `fill` removes the temp folder.
    """
    target = Path(target)
    tag = secrets.token_hex(4)
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    old = target.parent / f".{target.name}.old-{tag}"
    tmp.mkdir()
    had_old = False
    try:
        fill(tmp)
        fsync_dir(tmp)
        had_old = target.exists()
        if had_old:
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
