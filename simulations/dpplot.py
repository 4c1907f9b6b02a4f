"""One figure of final held-out loss against epsilon from several DP sweeps of one scenario
(each the output folder of `bitswarm simulate sweep SCENARIO --set dp_noise=...`), e.g. local
and distributed DP, with horizontal lines for each sweep's run without noise (dp_noise = 0:
clipping only), for reference runs (a summary.json each, e.g. the scenario without DP), and
for the first sweep's centralized baseline and untrained adapter (G_0).

    bitswarm simulate dp-plot --sweep "local DP=runs/a" --sweep "distributed DP=runs/b" \\
        --reference "no DP=runs/c/summary.json" --out docs/privacy/dp-noniid-8.png
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .scenario import ScenarioError


def _num(x: str) -> float | None:
    return None if x in ("", "None") else float(x)


def read_sweep(folder: Path) -> list[dict]:
    """The rows of folder/sweep.csv with dp_epsilon, final_heldout_loss and
    centralized_heldout_loss as floats (None where empty). Raises ScenarioError when the
    folder holds no sweep.csv or it has no dp_epsilon column (not a DP sweep)."""
    path = Path(folder) / "sweep.csv"
    if not path.is_file():
        raise ScenarioError(f"{folder}: no sweep.csv (run `bitswarm simulate sweep` first)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "dp_epsilon" not in rows[0]:
        raise ScenarioError(f"{path}: no dp_epsilon column: not a sweep of a DP key")
    for r in rows:
        for k in ("dp_epsilon", "final_heldout_loss", "centralized_heldout_loss"):
            r[k] = _num(r[k])
    return rows


def initial_loss(folder: Path, rows: list[dict]) -> float | None:
    """The untrained adapter's held-out loss: initial_heldout_loss of the sweep's first run
    (folder/KEY=VALUE/summary.json, KEY the first column of sweep.csv), or None."""
    key = next(iter(rows[0]))
    try:
        summary = json.loads((Path(folder) / f"{key}={rows[0][key]}" / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary.get("initial_heldout_loss")


def plot_dp(sweeps: list[tuple[str, Path]], out: Path,
            references: list[tuple[str, Path]] = (), title: str = "") -> None:
    """Write the PNG `out`, two panels (the whole range; a zoom from the lowest line to just
    above the untrained adapter's loss): per sweep (label, folder) its noised runs as points
    (x: epsilon, log scale), its noise-free run as a dashed line; each reference (label,
    summary.json), the first sweep's centralized loss and untrained loss as lines. Raises
    ScenarioError for a folder or file that is not what it should be; ImportError without
    matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(label, folder, read_sweep(folder)) for label, folder in sweeps]
    lines = []                                   # (y, style, color, label)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curves = []
    for (label, _, rows), color in zip(data, colors):
        pts = sorted((r["dp_epsilon"], r["final_heldout_loss"]) for r in rows
                     if r["dp_epsilon"] is not None and r["final_heldout_loss"] is not None
                     and math.isfinite(r["final_heldout_loss"]))
        curves.append((pts, color, label))
        for r in rows:
            if r["dp_epsilon"] is None and r["final_heldout_loss"] is not None:
                lines.append((r["final_heldout_loss"], "--", color,
                              f"{label}: clip only, no noise"))
    for (label, path), color in zip(references, ("black", "dimgray", "darkgray")):
        try:
            loss = json.loads(Path(path).read_text())["final_heldout_loss"]
        except (OSError, ValueError, KeyError) as e:
            raise ScenarioError(f"{path}: not a run's summary.json ({e})") from None
        lines.append((loss, "-.", color, label))
    first = data[0][2]
    central = next((r["centralized_heldout_loss"] for r in first
                    if r["centralized_heldout_loss"] is not None), None)
    if central is not None:
        lines.append((central, ":", "green", "centralized (pooled data)"))
    init = initial_loss(data[0][1], first)
    if init is not None:
        lines.append((init, "-", "red", "untrained adapter (G_0)"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax in axes:
        for pts, color, label in curves:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
        for y, ls, color, label in lines:
            ax.axhline(y, ls=ls, lw=1, color=color, label=label)
        ax.set(xscale="log", xlabel="epsilon after all rounds (delta as in the scenario)",
               ylabel="final held-out loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].set_title(title or "held-out loss vs epsilon")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    ys = [y for y, *_ in lines] + [p[1] for pts, *_ in curves for p in pts]
    lo = min(ys)
    hi = init if init is not None else max(ys)
    axes[1].set_ylim(lo - 0.1 * (hi - lo) - 1e-3, hi + 0.15 * (hi - lo) + 1e-3)
    axes[1].set_title("zoom: the untrained adapter and below")
    fig.tight_layout(rect=(0, 0.07 + 0.03 * ((len(handles) + 2) // 3), 1, 1))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def parse_pair(text: str, what: str) -> tuple[str, Path]:
    """'LABEL=PATH' -> (label, Path). Raises ScenarioError naming `what` otherwise."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise ScenarioError(f"{what} {text!r}: expected LABEL=PATH")
    return label, Path(path)
