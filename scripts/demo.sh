#!/usr/bin/env bash
# The main job: set up, then run a real 3-node swarm of `node start` processes on loopback,
# each fine-tuning the built-in default model on one BBC News topic. Extra args go to the
# simulation (e.g. --rounds 5 --nodes 4).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m bitswarm.simulations.local_swarm --run-dir runs/demo "$@"
