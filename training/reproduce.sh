#!/usr/bin/env bash
# One command to rebuild the default model: corpus + tokenizer, then pretraining, then install
# the result as the packaged default (docs/default-model.md). Needs a GPU through wgpu for the
# documented run (--device gpu); extra args go to pretrain.py (e.g. --steps 3005 --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
python training/prepare_corpus.py --out build/corpus
python training/pretrain.py --config training/default_model.json --corpus build/corpus \
    --out build/default_model --device gpu --max-seconds 450 --full-eval "$@"
cp build/default_model/model/* node/default_model/
