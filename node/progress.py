"""Progress of a running node: a rich live bar on a terminal, log lines otherwise.

On a terminal the bar shows round (numbered as the log and rounds.jsonl: from 0), local step,
loss, tokens/s, peers, bytes in/out, the phase (training / waiting / exchanging / saving) and the
time left in a phase that has a deadline. Without one (nohup, services, the demo harness) the
same facts are logged: a line at least every STEP_LINE_EVERY_S seconds of training and at each
round's last step, one line per phase change and one per completed round.
"""
from __future__ import annotations

import logging
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from bitswarm.node.logs import CONSOLE

log = logging.getLogger("bitswarm.node")

STEP_LINE_EVERY_S = 10.0     # non-terminal: at most this long between training progress lines


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class RoundProgress:
    """Shows round, local step, loss, tokens/s, peers, bytes and phase while a node runs."""

    def __init__(self, rounds: int | None, local_steps: int, *, live: bool | None = None) -> None:
        self.rounds = rounds
        self.local_steps = local_steps
        self.live = sys.stderr.isatty() if live is None else live
        self._progress: Progress | None = None
        self._task = None
        self._round = -1
        self._round_t0 = time.monotonic()
        self._tokens = 0
        self._last_line = 0.0
        self._phase, self._deadline = "training", None

    def __enter__(self) -> "RoundProgress":
        self._round_t0 = time.monotonic()
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]round {task.fields[round]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s  peers "
                           "{task.fields[peers]}  in {task.fields[bin]} / out {task.fields[bout]}"
                           "  [italic]{task.fields[phase]}"),
                console=CONSOLE, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.local_steps, round="-",
                                                 loss="-", tps="-", peers=0, bin="0 B",
                                                 bout="0 B", phase="starting")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def _label(self, rnd: int) -> str:
        return f"{rnd}" if self.rounds is None else f"{rnd} ({rnd + 1} of {self.rounds})"

    def _phase_text(self) -> str:
        if self._deadline is None:
            return self._phase
        return f"{self._phase} ({max(0.0, self._deadline - time.monotonic()):.0f} s left)"

    def step(self, rnd: int, step: int, loss: float, peers: int, bytes_in: int, bytes_out: int,
             tokens: int = 0) -> None:
        """After local step `step` (1-based) of round `rnd`; tokens: predicted tokens of it."""
        now = time.monotonic()
        if rnd != self._round:      # a round's clock starts when the previous one ended
            self._round, self._tokens = rnd, 0
            self._phase, self._deadline = "training", None
        self._tokens += tokens
        tps = self._tokens / max(now - self._round_t0, 1e-9)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, round=self._label(rnd),
                                  loss=f"{loss:.3f}", tps=f"{tps:.0f}", peers=peers,
                                  bin=human_bytes(bytes_in), bout=human_bytes(bytes_out),
                                  phase=self._phase_text())
        elif step == self.local_steps or now - self._last_line >= STEP_LINE_EVERY_S:
            self._last_line = now
            log.info("round %d: step %d/%d, loss %.4f, %.0f tokens/s, %d peer(s), in %s / out %s",
                     rnd, step, self.local_steps, loss, tps, peers, human_bytes(bytes_in),
                     human_bytes(bytes_out))

    def phase(self, rnd: int, name: str, deadline_s: float | None = None, detail: str = "") -> None:
        """Enter phase `name` of round rnd (waiting / exchanging / saving), optionally with a
        deadline in seconds from now; logged once, and shown (with its countdown) on the bar."""
        self._phase = name
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s
        left = "" if deadline_s is None else f" (deadline in {deadline_s:.0f} s)"
        log.info("round %d: %s%s%s", rnd, name, f": {detail}" if detail else "", left)
        if self._progress is not None:
            self._progress.update(self._task, phase=self._phase_text())

    def tick(self, peers: int | None = None, bytes_in: int | None = None,
             bytes_out: int | None = None) -> None:
        """Refresh the phase countdown, and peers / bytes when given (the bar only: between
        steps, e.g. while waiting for peers, the counters keep moving)."""
        if self._progress is None:
            return
        extra = {} if peers is None else {"peers": peers, "bin": human_bytes(bytes_in or 0),
                                          "bout": human_bytes(bytes_out or 0)}
        self._progress.update(self._task, phase=self._phase_text(), **extra)

    def round_done(self, rnd: int, train_loss: float | None, heldout_loss: float | None,
                   contributors: int, peers: int, bytes_in: int, bytes_out: int,
                   adapter_sha256: str) -> None:
        held = "-" if heldout_loss is None else f"{heldout_loss:.4f}"
        train = "- (rolled back)" if train_loss is None else f"{train_loss:.4f}"
        self._phase, self._deadline = "done", None
        self._round_t0 = time.monotonic()
        if self._progress is not None:
            self._progress.reset(self._task, total=self.local_steps)   # elapsed restarts too
        log.info("round %d done: train loss %s, held-out loss %s, %d update(s) aggregated, "
                 "%d peer(s), in %s / out %s, adapter sha256 %s", rnd, train, held, contributors,
                 peers, human_bytes(bytes_in), human_bytes(bytes_out), adapter_sha256)
