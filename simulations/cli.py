"""The simulations' command line: `python -m bitswarm.simulations run SCENARIO.toml --out DIR`.

The `bitswarm` program is this module's `bitswarm_main`: `bitswarm simulate ...` runs a
scenario, every other command is the node's (`bitswarm start ...` = `node start ...`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .scenario import ScenarioError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bitswarm simulate", description="Run a simulated swarm "
                                 "from a scenario file (docs/federation.md lists its keys).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one scenario; writes summary.json, rounds.csv, plots")
    r.add_argument("scenario", type=Path, help="scenario TOML file")
    r.add_argument("--out", type=Path, required=True, help="output folder")
    a = ap.parse_args(argv)
    from .runner import run_scenario
    try:
        summary = run_scenario(a.scenario, a.out)
    except ScenarioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0 if summary["rounds_completed"] > 0 else 1


def bitswarm_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        return main(argv[1:])
    from bitswarm.node.cli import main as node_main
    return node_main(argv)
