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
from .scenario import Scenario, load_scenario


def centralized_checkpoints(result: dict, s: Scenario) -> list[int]:
    """Cumulative optimizer steps of the swarm after each round (every trained node's steps):
    the centralized baseline sees the same tokens at each checkpoint."""
    steps, out = 0, []
    for r in range(s.rounds):
        steps += s.local_steps * sum(1 for row in result["rows"]
                                     if row["round"] == r and row.get("trained"))
        out.append(steps)
    return out


def run_scenario(path: Path | str, out: Path, *, log=print) -> dict:
    """Run the scenario at `path`, writing everything under `out`. Returns the summary.
    Raises ScenarioError (bad file) before anything is written."""
    s = load_scenario(path)
    base = Path(path).resolve().parent
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
