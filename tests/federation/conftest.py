"""Shared fixtures of the federation tests.

`node_process`: the class NodeProcess, a test-side driver for node processes
(helpers_fed_node.py) speaking JSON lines. A fixture because --import-mode=importlib puts no
test folder on sys.path, so test modules cannot import a helper module.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "helpers_fed_node.py"


class NodeProcess:
    """One node process. stderr goes to `<log_path>` so a chatty node cannot block on a pipe."""

    def __init__(self, data_dir: Path, topic: str, peers: list[str] = (), env: dict | None = None) -> None:  # type: ignore[assignment]
        self.log_path = Path(data_dir) / "node.log"
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(NODE_SCRIPT), str(data_dir), topic, *peers],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **(env or {})},
        )
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            ready = self.expect(lambda e: e["event"] == "ready", timeout_s=20)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        self.peer_id: str = ready["peer_id"]
        self.addr: str = ready["addrs"][0]

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.events.put({"event": "garbage", "line": line.decode(errors="replace")})

    def send(self, **cmd: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def expect(self, pred: Callable[[dict], bool], timeout_s: float) -> dict:
        """Next event matching `pred` (earlier non-matching events are kept in `seen`)."""
        for event in self.seen:
            if pred(event):
                self.seen.remove(event)
                return event
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event within {timeout_s} s; seen {self.seen[-5:]}; log:\n{self.log()}")
            try:
                event = self.events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node exited with {self.proc.returncode}; log:\n{self.log()}") from None
                continue
            if event["event"] == "error":
                raise RuntimeError(f"node reported error: {event['message']}")
            if pred(event):
                return event
            self.seen.append(event)

    def gossip_from(self, peer_id: str, data: str, timeout_s: float = 10) -> dict:
        return self.expect(lambda e: e["event"] == "gossip" and e["from"] == peer_id and e["data"] == data, timeout_s)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout_s: float = 10) -> float:
        """Ask the node to quit; returns seconds until it exited (kills it on timeout)."""
        start = time.monotonic()
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(timeout=timeout_s)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return time.monotonic() - start

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def node_process() -> type[NodeProcess]:
    """NodeProcess(data_dir, topic, peers=(), env=None): a real node process on 127.0.0.1."""
    return NodeProcess
