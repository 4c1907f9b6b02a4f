"""Run one scenario file end to end: data, engine, centralized baseline, report.

    python -m bitswarm.simulations run SCENARIO.toml --out DIR
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .datasets import build_data, topic_counts
from .report import write_report
from .scenario import Scenario, ScenarioError, load_scenario


def centralized_checkpoints(result: dict, s: Scenario) -> list[int]:
    """Cumulative optimizer steps of the swarm after each round (every trained node's steps):
    the centralized baseline sees the same tokens at each checkpoint."""
    steps, out = 0, []
    for r in range(s.rounds):
        steps += s.local_steps * sum(1 for row in result["rows"]
                                     if row["round"] == r and row.get("trained"))
        out.append(steps)
    return out


def run_scenario(path: Path | str | Scenario, out: Path, *, log=print) -> dict:
    """Run the scenario at `path` (or a loaded Scenario), writing everything under `out`.
    Returns the summary. Raises ScenarioError (bad file) before anything is written."""
    s = path if isinstance(path, Scenario) else load_scenario(path)
    base = Path(s.path).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("nodes", "data", "work"):      # a rerun starts fresh (never resumes a run)
        shutil.rmtree(out / sub, ignore_errors=True)
    t0 = time.monotonic()
    notes = []
    if s.engine == "virtual":
        from .virtual import run_virtual
        if s.surrogate:
            from .learners import SurrogateLearners
            learners = SurrogateLearners(s, topic_counts(s.data, s.nodes, s.seed))
            notes.append("training replaced by the quadratic surrogate (learners.py): the "
                         "protocol, codecs and rules are real, the losses are not a model's")
        else:
            from .learners import ModelLearners
            data = build_data(s.data, s.nodes, out / "data", seed=s.seed, base=base)
            learners = ModelLearners(s, data.nodes, data.eval, out / "work")
            (out / "data" / "topics.json").write_text(json.dumps(data.topics) + "\n")
        log(f"{s.name}: {s.nodes} virtual nodes, {s.rounds} rounds")
        result = run_virtual(s, learners, log=log)
        centralized = None
        if s.centralized_baseline:
            log("centralized baseline: the same LoRA on the pooled data, same tokens")
            centralized = learners.centralized(centralized_checkpoints(result, s))
    else:
        from .processes import run_processes
        data = build_data(s.data, s.nodes, out / "data", seed=s.seed, base=base)
        result, centralized = run_processes(s, data, out, log=log)
    result["notes"] = notes + result.get("notes", [])
    result["wall_s"] = time.monotonic() - t0
    shutil.rmtree(out / "work", ignore_errors=True)
    return write_report(out, s, result, centralized)


def _cell(x: str):
    """A sweep.csv cell back to what write_sweep wrote: None, bool, int, float or str."""
    if x in ("", "None"):
        return None
    if x in ("True", "False"):
        return x == "True"
    for kind in (int, float):
        try:
            return kind(x)
        except ValueError:
            pass
    return x


def earlier_rows(out: Path, key: str) -> list[dict]:
    """The rows of an earlier out/sweep.csv of the same key ([] when there is none). Raises
    ScenarioError when it swept another key."""
    import csv
    if not (out / "sweep.csv").is_file():
        return []
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and next(iter(rows[0])) != key:
        raise ScenarioError(f"{out / 'sweep.csv'} swept {next(iter(rows[0]))}, not {key}: "
                            "--add needs the same key")
    return [{k: (v if k == key else _cell(v)) for k, v in r.items()} for r in rows]


def sweep(path: Path | str, key: str, values: list[str], out: Path, *, log=print,
          add: bool = False) -> list[dict]:
    """Run the scenario once per value of `key` (a top-level scenario key), each in
    out/<key>=<value>/; writes out/sweep.csv, out/sweep.md and out/sweep.png (final held-out
    loss per value; against epsilon when sweeping a DP key). add: keep the rows of an earlier
    out/sweep.csv (same key) for values not run now, sorted by value when all are numbers.
    Returns the rows written. Raises ScenarioError for an unknown key or a value of the wrong
    form (or, with add, an earlier sweep of another key), before anything runs."""
    import dataclasses
    s0 = load_scenario(path)
    kept = earlier_rows(out, key) if add else []
    names = {f.name for f in dataclasses.fields(Scenario)} - {"data", "link", "churn", "path"}
    if key not in names:
        raise ScenarioError(f"--set {key}: not a top-level scenario key; choose from "
                            f"{sorted(names)}")
    runs = []
    for v in values:
        raw = getattr(s0, key)
        try:
            val = type(raw)(v) if not isinstance(raw, bool) else v.lower() in ("1", "true")
        except ValueError:
            raise ScenarioError(f"--set {key}={v}: expected a {type(raw).__name__}") from None
        s = dataclasses.replace(s0, **{key: val})
        from .scenario import _check
        _check(Path(s0.path), s)
        runs.append((v, s))
    rows = []
    for v, s in runs:
        log(f"== {key} = {v}")
        summary = run_scenario(s, out / f"{key}={v}", log=log)
        rows.append({key: v, **{k: summary[k] for k in (
            "final_heldout_loss", "centralized_heldout_loss", "reduction_captured",
            "final_vs_centralized", "payload_compression", "bytes_sent_total",
            "fp32_bytes_equivalent", "adapters_identical", "wall_s")},
            "dp_epsilon": (summary.get("dp") or {}).get("epsilon")})
    rows = [r for r in kept if r[key] not in values] + rows
    try:
        rows.sort(key=lambda r: float(r[key]))
    except ValueError:
        pass                                    # not numbers: earlier rows, then new ones
    write_sweep(out, key, rows)
    return rows


def write_sweep(out: Path, key: str, rows: list[dict]) -> None:
    import csv
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fmt = lambda x: "" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(fmt(r[k]) for k in rows[0]) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    dp = key.startswith("dp_") and all(r["dp_epsilon"] is not None for r in rows
                                       if float(r[key] or 0) > 0)
    fig, ax = plt.subplots(figsize=(6, 4))
    if dp:
        pts = [(r["dp_epsilon"], r["final_heldout_loss"]) for r in rows
               if r["dp_epsilon"] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="swarm with DP")
        ax.set(xscale="log", xlabel="epsilon (delta as in the scenario)")
        no_dp = [r["final_heldout_loss"] for r in rows if r["dp_epsilon"] is None]
        if no_dp:
            ax.axhline(no_dp[0], ls="--", color="gray", label="no noise")
    else:
        ax.plot(range(len(rows)), [r["final_heldout_loss"] for r in rows], "o-")
        ax.set_xticks(range(len(rows)), [str(r[key]) for r in rows])
        ax.set(xlabel=key)
    central = rows[0]["centralized_heldout_loss"]
    if central is not None:
        ax.axhline(central, ls=":", color="green", label="centralized")
    ax.set(ylabel="final held-out loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    plt.close(fig)
