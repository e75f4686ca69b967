#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash scripts/dev.sh serve [N]   set up .venv, then run the gateway and N workers (default 1) here
#   bash scripts/dev.sh test        set up .venv (with the onnx and openvino extras, so that every scorer
#                                   mode is tested), then run the whole test suite
#   bash scripts/dev.sh setup       only set up .venv
# CPU torch is installed first, on its own: a bare torch requirement can pull a multi-GB CUDA build.
# Elsewhere than our machines, point TORCH_INDEX_URL at https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

setup() {
  local extras=${1:-worker,dev}
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "dev: installing CPU torch $TORCH_VERSION" >&2
    "${pip[@]}" "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
  echo "dev: installing the project" >&2
  "${pip[@]}" -c constraints/torch-cpu.txt -e ".[$extras]"
}

serve() {
  local n=${1:-1}
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
  "$VENV/bin/python" -m gateway & pids+=($!)
  for _ in $(seq "$n"); do "$VENV/bin/python" -m worker & pids+=($!); done
  echo "dev: gateway on http://127.0.0.1:${PORT:-8300} (docs: /docs), $n worker(s); Ctrl-C stops all" >&2
  wait -n "${pids[@]}"
}

case "${1:-}" in
  setup) setup ;;
  serve) setup; serve "${2:-1}" ;;
  test) setup worker,dev,onnx,openvino; shift; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/dev.sh serve [N] | test [pytest args] | setup" >&2; exit 2 ;;
esac
