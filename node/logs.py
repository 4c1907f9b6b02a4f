"""Where the node's log lines go: stderr for people, `<data-dir>/node.log` always (rotated), and
one JSON object per line with `--log-format json` for machines.

stderr: a RichHandler on a terminal (it prints above the live progress bar, which shares its
console), else plain `time level logger: message` lines. node.log: the same lines as plain text
(or JSON), 10 MiB per file, 3 old files kept.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
LOG_FILE = "node.log"
LOG_FILE_BYTES = 10 * 2**20
LOG_FILE_BACKUPS = 3

# One console for the live bar and (on a terminal) the log handler, so log lines print above the
# bar instead of through it.
CONSOLE = Console(stderr=True)
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """{"ts": unix seconds, "time": ISO 8601 UTC, "level", "logger", "msg"} per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT)


def _not_file_only(record: logging.LogRecord) -> bool:
    """Records logged with extra={"file_only": True} (a failed command's traceback: stderr gets
    one line instead) go to node.log only."""
    return not getattr(record, "file_only", False)


def stderr_handler(fmt: str = "text") -> logging.Handler:
    """RichHandler on the shared console when stderr is a terminal (text format), else a plain
    stream handler."""
    if fmt == "text" and sys.stderr.isatty():
        from rich.logging import RichHandler
        h: logging.Handler = RichHandler(console=CONSOLE, show_path=False)
        h.setFormatter(logging.Formatter("%(name)s: %(message)s"))   # time and level: rich's columns
    else:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_formatter(fmt))
    h.addFilter(_not_file_only)
    return h


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging to stderr at `level` (one of LEVELS) in `fmt` (one of FORMATS)."""
    logging.basicConfig(level=getattr(logging, level), handlers=[stderr_handler(fmt)], force=True)


def add_file(data_dir: Path, fmt: str = "text") -> Path:
    """Also log into data_dir/node.log (rotated); returns its path."""
    path = Path(data_dir) / LOG_FILE
    h = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES,
                                             backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
    h.setFormatter(_formatter(fmt))
    logging.getLogger().addHandler(h)
    return path


def quiet_vulkan_loader() -> None:
    """Give the Vulkan loader / Mesa WSI a valid XDG_RUNTIME_DIR when the session has none, so
    probing for a GPU does not print "error: XDG_RUNTIME_DIR is invalid or not set" (twice) on
    machines without a desktop session; a private per-user folder, mode 0700."""
    cur = os.environ.get("XDG_RUNTIME_DIR")
    if cur and os.path.isdir(cur):
        return
    d = Path(tempfile.gettempdir()) / f"bitswarm-runtime-{os.getuid()}"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return                    # cosmetic only: the loader then prints its line, nothing breaks
    os.environ["XDG_RUNTIME_DIR"] = str(d)
