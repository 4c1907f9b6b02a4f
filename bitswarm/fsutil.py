"""Crash-safe file writes: the one way bitswarm writes files that must survive a crash (model
checkpoints, adapters, exports, the default-model copy, rounds.jsonl); POSIX rename semantics.

A reader never sees a half-written file or folder: data goes to a temp name beside the target,
is fsync'd, then renamed over it, and the parent folder is fsync'd so the rename survives a crash.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory (makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durable(path: Path, data: bytes) -> None:
    """Write bytes to a NEW file at `path` and fsync it (no rename: for files inside a folder
    that `replace_dir_atomic` renames into place as a whole). Raises FileExistsError if present."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path `.NAME.tmp-XXXX` beside `path` for the caller to write (by name, e.g.
    a library writer or shutil.copyfile); on normal exit fsync it (durable), os.replace it onto
    `path` and fsync the parent folder (durable). On an exception the temp file is removed and
    `path` is untouched."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by a file holding `data`, atomically and durably (`atomic_file`)."""
    with atomic_file(path) as tmp:
        write_file_durable(tmp, data)


def write_file_replace(path: Path, data: bytes) -> None:
    """Replace `path` by a file holding `data` atomically but without fsync: readers see the
    old or the new file whole. For snapshots rewritten every second (status.json), where
    three fsyncs a write cost more than the snapshot is worth after a power loss."""
    with atomic_file(path, durable=False) as tmp:
        tmp.write_bytes(data)


def copy_file_atomic(src: Path, dst: Path) -> None:
    """Replace `dst` by a byte copy of `src`, atomically and durably (`atomic_file`)."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)


def append_line_durable(path: Path, line: str) -> None:
    """Append one text line (a newline is added) and fsync: a crash loses at most this line,
    and readers of line-oriented logs (rounds.jsonl) skip a torn last line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def replace_dir_atomic(target: Path, fill: Callable[[Path], None]) -> None:
    """Replace folder `target` by one that `fill(tmp)` writes (fill must fsync its files).

    Protocol (P = target's parent, D = its name, XXXX random):
      1. fill P/.D.tmp-XXXX, fsync it;  2. if D exists, rename D -> P/.D.old-XXXX;
      3. rename P/.D.tmp-XXXX -> D, fsync P;  4. remove P/.D.old-XXXX.
    A crash leaves either D complete, or no D and a complete .D.old-XXXX beside it (readers may
    fall back to it; formats/peft_adapter.py does). A failing `fill` removes the temp folder.
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
