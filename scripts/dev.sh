#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash scripts/dev.sh serve [N]     set up .venv, then run the gateway and N workers (default 1) here
#   bash scripts/dev.sh test [ARGS]   set up .venv (with the onnx and openvino extras, so that every scorer
#                                     mode is tested), then run the test suite (pytest ARGS)
#   bash scripts/dev.sh setup         only set up .venv
# VENV names another virtualenv. The project is installed again only when pyproject.toml changes.
# Torch comes first, on its own, because a bare torch requirement can pull a multi-GB CUDA build: the
# CPU build from the PyTorch CPU index, or from the default index where that one cannot be reached
# (TORCH_INDEX_URL names the index to use instead); a CUDA build is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

say() { echo "dev: $*" >&2; }

setup() {
  local extras=${1:-worker,dev}
  local stamp="$VENV/.reranker-installed-${extras//,/-}"
  local want
  want=$({ cat pyproject.toml constraints/torch-cpu.txt; echo "$extras $TORCH_VERSION $PWD"; } | cksum)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return  # installed, and nothing it was installed from has changed
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  "$VENV/bin/python" -c "import torch" 2>/dev/null || install_torch "${pip[@]}"
  check_cpu_torch
  say "installing the project with its extras $extras"
  "${pip[@]}" -c constraints/torch-cpu.txt -e ".[$extras]"
  echo "$want" > "$stamp"
}

install_torch() {  # ARGS: the pip install command
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    say "installing torch $TORCH_VERSION from $TORCH_INDEX_URL"
    "$@" "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
    return
  fi
  say "installing CPU torch $TORCH_VERSION from the PyTorch CPU index"
  # One quick try: a machine that cannot reach the index should not wait out pip's retries.
  if ! "$@" "torch==$TORCH_VERSION" --index-url "$PYTORCH_CPU_INDEX" --timeout 10 --retries 0 2>/dev/null; then
    say "the PyTorch CPU index cannot be reached; installing torch $TORCH_VERSION from the default index"
    "$@" "torch==$TORCH_VERSION"
  fi
}

check_cpu_torch() {
  "$VENV/bin/python" -W ignore -c '
import sys, torch
if torch.version.cuda is not None:
    sys.exit(f"dev: torch {torch.__version__} in {sys.prefix} is a CUDA build, several GB that this CPU service does "
             f"not use: remove it ({sys.prefix}/bin/python -m pip uninstall -y torch) and run again with "
             f"TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu, or a mirror of that index")
'
}

serve() {
  local n=${1:-1} checked url threads pool
  # The settings (environment and .env), checked before anything starts: a bad value stops here with one
  # line. Then the gateway's address, and the defaults this script gives where the user set nothing:
  # N workers share this host's cores (replicas x NUM_THREADS <= cores), and this run's workers form a pool
  # of their own, so that they never join another instance's gateway.
  checked=$("$VENV/bin/python" - "$n" "$$" <<'EOF'
import os, sys
from dotenv import dotenv_values
from shared.settings import load_or_exit, usable_cpus
s = load_or_exit()
user = {**dotenv_values(".env"), **os.environ}
host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
host = f"[{host}]" if ":" in host else host
threads = "-" if "NUM_THREADS" in user else max(1, usable_cpus() // int(sys.argv[1]))
pool = "-" if "RERANKER_POOL" in user else f"dev-{s.port}-{sys.argv[2]}"
print(f"http://{host}:{s.port}", threads, pool)
EOF
  ) || exit $?
  read -r url threads pool <<<"$checked"
  [ "$threads" = - ] || export NUM_THREADS=$threads
  [ "$pool" = - ] || export RERANKER_POOL=$pool
  export PYTHONUNBUFFERED=1
  logs=$(mktemp -d "${TMPDIR:-/tmp}/reranker-dev.XXXXXX")
  pids=() names=() stopping=
  trap 'stopping=1' INT TERM  # handled below, between commands

  start gateway "$VENV/bin/python" -m gateway
  # Until this gateway listens (gunicorn says so: another one may answer on the port meanwhile) and answers.
  until grep -qs "Listening at: " "$logs/0.log" && "$VENV/bin/python" -c \
        'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url/health" 2>/dev/null; do
    [ -z "$stopping" ] || { stop; exit 0; }
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
      local code=0
      wait "${pids[0]}" || code=$?
      rm -rf "$logs"
      exit "$((code ? code : 1))"  # its own last line said why
    fi
    sleep 0.2
  done
  say "gateway on $url (API docs: $url/docs); starting $n worker(s), NUM_THREADS=${NUM_THREADS:-as set in .env} each;" \
      "Ctrl-C stops all"
  for i in $(seq "$n"); do
    start "worker $i" "$VENV/bin/python" -m worker
  done

  # Until Ctrl-C or SIGTERM, or until one of them exits: with 0, it was stopped (a Ctrl-C reaches every
  # program here at once); else it failed: stop the others, and end with the line in which it said why.
  local code=0 gone=0
  wait -n "${pids[@]}" || code=$?
  if [ -n "$stopping" ] || [ "$code" = 0 ]; then
    stop
    exit 0
  fi
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || gone=$i
  done
  local last
  last=$(tail -n 1 "$logs/$gone.log" 2>/dev/null || true)
  trap - INT TERM
  stop
  say "${names[$gone]} exited with code $code; the others were stopped. It said: $last"
  exit "$code"
}

start() {  # NAME COMMAND...: run it in the background, its output shown and kept in $logs
  local name=$1
  shift
  # tee ignores Ctrl-C, so that it still shows what the programs print while they stop.
  "$@" > >(trap '' INT; exec tee "$logs/${#pids[@]}.log") 2>&1 &
  pids+=($!)
  names+=("$name")
}

stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true  # the programs, and what shows their output
  rm -rf "$logs"
}

case "${1:-}" in
  setup) setup ;;
  serve) setup; serve "${2:-1}" ;;
  test) setup worker,dev,onnx,openvino; shift; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/dev.sh serve [N] | test [pytest args] | setup" >&2; exit 2 ;;
esac
