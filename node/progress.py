"""Progress display: a rich live bar on a terminal, one log line per round otherwise."""
from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("bitswarm.node")

# One console for the live bar and (on a terminal) the log handler, so log lines print above the
# bar instead of through it.
CONSOLE = Console(stderr=True)


def log_handler() -> logging.Handler:
    """RichHandler on the shared console when stderr is a terminal, else a plain stream handler."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler
        h = RichHandler(console=CONSOLE, show_path=False)
        h.setFormatter(logging.Formatter("%(name)s: %(message)s"))   # time and level: rich's columns
        return h
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return h


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class RoundProgress:
    """Shows round, local step, loss, peers and bytes in/out while a node trains."""

    def __init__(self, rounds: int | None, local_steps: int) -> None:
        self.rounds = rounds
        self.local_steps = local_steps
        self.live = sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "RoundProgress":
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]round {task.fields[round]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  peers {task.fields[peers]}  "
                           "in {task.fields[bin]} / out {task.fields[bout]}"),
                TimeElapsedColumn(), console=CONSOLE, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.local_steps, round="-",
                                                 loss="-", peers=0, bin="0 B", bout="0 B")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def step(self, rnd: int, step: int, loss: float, peers: int, bytes_in: int, bytes_out: int) -> None:
        if self._progress is None:
            return
        total = "" if self.rounds is None else f"/{self.rounds}"
        self._progress.update(self._task, completed=step, round=f"{rnd + 1}{total}", loss=f"{loss:.3f}",
                              peers=peers, bin=human_bytes(bytes_in), bout=human_bytes(bytes_out))

    def round_done(self, rnd: int, train_loss: float, heldout_loss: float | None, contributors: int,
                   peers: int, bytes_in: int, bytes_out: int, adapter_sha256: str) -> None:
        held = "-" if heldout_loss is None else f"{heldout_loss:.4f}"
        log.info("round %d done: train loss %.4f, held-out loss %s, %d update(s) aggregated, "
                 "%d peer(s), in %s / out %s, adapter sha256 %s", rnd, train_loss, held, contributors,
                 peers, human_bytes(bytes_in), human_bytes(bytes_out), adapter_sha256)
