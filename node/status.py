"""`node status`: what a running node is doing, from `<data-dir>/status.json`, which the node
rewrites (atomically) when a field changes, and every REFRESH_S seconds at least.

Fields: pid, swarm, peer_id, started (unix s), updated (unix s), uptime_s, phase, round (the one
in progress), rounds_completed (this session), resumed_from (round or null), peers (IDs
connected), swarm_members (IDs on the swarm's topic), last_train_loss, last_heldout_loss,
adapter_sha256 (after the last completed round), adapter_agrees (whether the last round's
contributors were all the swarm members seen: protocol v1 has no adapter-hash exchange, so this
is the best local evidence; null before a round completes), bytes_in, bytes_out.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bitswarm.fsutil import write_file_replace

STATUS_FILE = "status.json"
REFRESH_S = 5.0      # rewrite at least this often (updated / uptime_s) when nothing else changes


class StatusFile:
    """The running node's side: `update(**fields)` then `write()` (cheap: one small file)."""

    def __init__(self, data_dir: Path, **fields) -> None:
        self.path = Path(data_dir) / STATUS_FILE
        now = time.time()
        self.fields = {"pid": os.getpid(), "started": now, "phase": "starting", "round": None,
                       "rounds_completed": 0, "resumed_from": None, "peers": [],
                       "swarm_members": [], "last_train_loss": None, "last_heldout_loss": None,
                       "adapter_sha256": None, "adapter_agrees": None, "dp_epsilon": None,
                       "bytes_in": 0,
                       "bytes_out": 0, **fields}
        self._written, self._written_at = "", 0.0        # what the file holds, when written

    def update(self, **fields) -> None:
        self.fields.update(fields)

    def write(self) -> None:
        """Rewrite the file if a field changed or REFRESH_S passed (no fsync: a snapshot; the
        node polls it every second, 32 nodes on one disk made the fsyncs a real cost)."""
        now = time.time()
        content = json.dumps({k: v for k, v in self.fields.items()
                              if k not in ("updated", "uptime_s")}, allow_nan=False, sort_keys=True)
        if content == self._written and now - self._written_at < REFRESH_S:
            return
        self._written, self._written_at = content, now
        self.fields.update(updated=now, uptime_s=round(now - self.fields["started"], 1))
        write_file_replace(self.path, json.dumps(self.fields, allow_nan=False).encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(data_dir: Path) -> dict:
    """The status file plus `running` (its PID is alive). Raises ValueError naming the file
    when no node ever ran there."""
    path = Path(data_dir) / STATUS_FILE
    try:
        st = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--data-dir {data_dir}: no {STATUS_FILE}; no node has run there") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    st["running"] = _alive(int(st.get("pid", -1))) and st.get("phase") != "stopped"
    return st
