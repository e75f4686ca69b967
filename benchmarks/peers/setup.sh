#!/usr/bin/env bash
# Set up the peer servers' virtual environments under benchmarks/.venvs (gitignored):
#   bash benchmarks/peers/setup.sh [infinity] [litserve]     (default: both)
# Each venv gets CPU torch first, then the peer with a constraints file pinning torch, so
# that no resolver step can swap in a multi-GB CUDA build. Peers are never a dependency of
# the service; the benchmark skips a peer whose venv is missing.
# Logs: benchmarks/.venvs/<peer>.log. A venv is "ready" once <venv>/.ready exists.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENVS=$ROOT/benchmarks/.venvs
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON=${PYTHON:-python3}
mkdir -p "$VENVS"
CONSTRAINTS=$VENVS/constraints.txt
printf 'torch==%s\n' "$TORCH_VERSION" >"$CONSTRAINTS"

make_venv() {  # name, then pip arguments
  local name=$1; shift
  local venv=$VENVS/$name
  rm -f "$venv/.ready"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv" || return 1
  local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  "$venv/bin/python" -c "import torch" 2>/dev/null ||
    "${pip[@]}" "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} || return 1
  "${pip[@]}" -c "$CONSTRAINTS" "$@" || return 1
  "$venv/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__" || return 1
  [ "$name" = infinity ] || touch "$venv/.ready"
}

setup_infinity() {
  # infinity-emb 0.0.78: the torch engine uses sentence-transformers' CrossEncoder; the optimum engine
  # loads an ONNX file from the model directory (the suite exports one: peers/export_onnx.py) and
  # optimises it with optimum's ORTOptimizer. optimum 2.x renamed an option infinity passes to it
  # (optimize_with_onnxruntime_only), so optimum stays on 1.x, which caps transformers below 4.49.
  make_venv infinity "infinity-emb[server,torch,optimum]==0.0.78" "optimum[onnxruntime]>=1.24,<2" \
    "transformers<4.49" "sentence-transformers<4" \
    "pyarrow<19" "datasets<3.3" || return 1  # datasets 5 needs pyarrow>=21, i.e. numpy 2; infinity keeps numpy 1.x
  # optimum 1.27 imports helpers that torch 2.13 moved; without this `import optimum.onnxruntime` fails
  "$VENVS/infinity/bin/python" benchmarks/peers/patch_infinity.py || return 1
  "$VENVS/infinity/bin/python" -c "import optimum.onnxruntime, infinity_emb" || return 1
  touch "$VENVS/infinity/.ready"
}

setup_litserve() {
  make_venv litserve "litserve==0.2.19" "sentence-transformers>=5.4" "transformers" "sentencepiece" "protobuf"
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(infinity litserve)
status=0
for peer in "${peers[@]}"; do
  echo "peers: setting up $peer (log: $VENVS/$peer.log)" >&2
  start=$(date +%s)
  if "setup_$peer" >"$VENVS/$peer.log" 2>&1; then
    echo "peers: $peer ready in $(( $(date +%s) - start )) s" >&2
  else
    echo "peers: $peer FAILED after $(( $(date +%s) - start )) s; see $VENVS/$peer.log" >&2
    tail -5 "$VENVS/$peer.log" >&2
    status=1
  fi
done
exit $status
