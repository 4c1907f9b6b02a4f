"""One figure of final held-out loss against epsilon from several DP sweeps of one scenario
(each the output folder of `bitswarm simulate sweep SCENARIO --set dp_noise=...`), e.g. local
and distributed DP, with horizontal lines for each sweep's run without noise (dp_noise = 0:
clipping only), for reference runs (a summary.json each, e.g. the scenario without DP) and
for the centralized baseline of the first sweep.

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


def plot_dp(sweeps: list[tuple[str, Path]], out: Path,
            references: list[tuple[str, Path]] = (), title: str = "") -> None:
    """Write the PNG `out`: per sweep (label, folder) its noised runs as points (x: epsilon,
    log scale), its noise-free run as a dashed line; each reference (label, summary.json) and
    the first sweep's centralized loss as dotted lines. Raises ScenarioError for a folder or
    file that is not what it should be; ImportError without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(label, read_sweep(folder)) for label, folder in sweeps]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, rows), color in zip(data, colors):
        pts = sorted((r["dp_epsilon"], r["final_heldout_loss"]) for r in rows
                     if r["dp_epsilon"] is not None and r["final_heldout_loss"] is not None
                     and math.isfinite(r["final_heldout_loss"]))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
        for r in rows:
            if r["dp_epsilon"] is None and r["final_heldout_loss"] is not None:
                ax.axhline(r["final_heldout_loss"], ls="--", lw=1, color=color,
                           label=f"{label}: clip only, no noise")
    grays = ("black", "dimgray", "darkgray")
    for (label, path), color in zip(references, grays):
        try:
            loss = json.loads(Path(path).read_text())["final_heldout_loss"]
        except (OSError, ValueError, KeyError) as e:
            raise ScenarioError(f"{path}: not a run's summary.json ({e})") from None
        ax.axhline(loss, ls="-.", lw=1, color=color, label=label)
    central = next((r["centralized_heldout_loss"] for _, rows in data[:1] for r in rows
                    if r["centralized_heldout_loss"] is not None), None)
    if central is not None:
        ax.axhline(central, ls=":", color="green", label="centralized (pooled data)")
    ax.set(xscale="log", xlabel="epsilon after all rounds (delta as in the scenario)",
           ylabel="final held-out loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_pair(text: str, what: str) -> tuple[str, Path]:
    """'LABEL=PATH' -> (label, Path). Raises ScenarioError naming `what` otherwise."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise ScenarioError(f"{what} {text!r}: expected LABEL=PATH")
    return label, Path(path)
