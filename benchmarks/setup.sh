#!/usr/bin/env bash
# The benchmark suite's setup on a fresh clone, in one command:
#   bash benchmarks/setup.sh [--no-peers] [--install-wrk] ...   (options of `python -m benchmarks setup`)
# 1. .venv with CPU torch and the project (scripts/dev.sh setup);
# 2. `python -m benchmarks setup` in it: the onnx/openvino/bench extras, the model, the peers' venvs,
#    and the service warmed up on this machine (see benchmarks/setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VENV=$VENV bash scripts/dev.sh setup
exec "$VENV/bin/python" -m benchmarks setup "$@"
