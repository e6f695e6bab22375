#!/usr/bin/env bash
# Per-choice log-likelihoods against an independent PyTorch computation (issue 33; benchmark only, never needed by the
# build or the tests). Installs Debian's python3-torch if missing; writes a tiny random Qwen2-style float32 model folder
# (q/k/v biases, grouped-query attention) unless --model names an existing one; scores random multiple-choice
# questions with ResLora (shared-context and naive, max length 48, one request cut from the left) and recomputes every
# request in bench/pytorch/loglik_peer.py. Exit 0 when both modes agree with PyTorch to 1e-4.
# Usage: bench/loglik-check.sh [--model DIR] [--tol 1e-4]
#        bench/loglik-check.sh --bench [--preset qwen2.5-0.5b] [--layers N] [--questions Q] [--choices 4] [--context T] [--choice-tokens K] [--threads N] [--repeats R]
#          times shared-context against naive scoring on a random-init preset shape (questions/s of each, the ratio).
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=bench/pytorch/loglik
if [ "${1:-}" = "--bench" ]; then
  shift
  dotnet run --project "$PROJECT" -c Release -- bench "$@"
  exit
fi
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  echo "installing python3-torch (benchmark only)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-torch >/dev/null
fi
MODEL="" TOL=1e-4
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --tol) TOL="$2"; shift 2 ;;
    *) echo "bench/loglik-check.sh: unknown argument $1 (--model DIR, --tol X, or --bench ...)" >&2; exit 2 ;;
  esac
done
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
[ -n "$MODEL" ] || MODEL="$W/tiny"
dotnet run --project "$PROJECT" -c Release -- check --model "$MODEL" --out "$W/scores.json"
/usr/bin/python3 bench/pytorch/loglik_peer.py --model "$MODEL" --scores "$W/scores.json" --tol "$TOL"
