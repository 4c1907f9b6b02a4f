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
    w = sub.add_parser("sweep", help="run a scenario once per value of one key; writes "
                       "sweep.csv, sweep.md, sweep.png and one run folder per value")
    w.add_argument("scenario", type=Path, help="scenario TOML file")
    w.add_argument("--set", required=True, metavar="KEY=V1,V2,...",
                   help="a top-level key and its values, e.g. codec=fp32,int8,top-k")
    w.add_argument("--out", type=Path, required=True, help="output folder")
    w.add_argument("--add", action="store_true", help="keep an earlier sweep.csv's rows in "
                   "--out (same key) for the values not run now")
    d = sub.add_parser("dp-plot", help="one figure of held-out loss vs epsilon from several "
                       "DP sweeps (e.g. local and distributed DP)")
    d.add_argument("--sweep", action="append", required=True, metavar="LABEL=DIR",
                   help="a sweep's output folder (holds sweep.csv) and its legend label")
    d.add_argument("--reference", action="append", default=[], metavar="LABEL=SUMMARY",
                   help="a run's summary.json drawn as a horizontal line (e.g. no DP)")
    d.add_argument("--title", default="", help="the figure's title")
    d.add_argument("--out", type=Path, required=True, help="the PNG to write")
    a = ap.parse_args(argv)
    if a.cmd == "dp-plot":
        from .dpplot import parse_pair, plot_dp
        try:
            plot_dp([parse_pair(x, "--sweep") for x in a.sweep], a.out,
                    [parse_pair(x, "--reference") for x in a.reference], a.title)
        except ScenarioError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(a.out)
        return 0
    from .runner import run_scenario, sweep
    try:
        if a.cmd == "sweep":
            key, sep, values = a.set.partition("=")
            if not sep or not values:
                raise ScenarioError(f"--set {a.set!r}: expected KEY=V1,V2,...")
            rows = sweep(a.scenario, key, values.split(","), a.out, add=a.add)
            print((a.out / "sweep.md").read_text())
            return 0 if all(r["final_heldout_loss"] is not None for r in rows) else 1
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
