#!/usr/bin/env bash
# Side-by-side comparison with PyTorch (benchmark only; never needed by the build or the tests).
# Installs Debian's python3-torch and libopenblas0-pthread if missing, then runs `reslora bench pytorch`, which
# trains identical steps here and in bench/pytorch/peer.py alternately, checks the losses agree, and prints ratios.
# Usage: bench/compare-pytorch.sh [--method lora|reslora] [--structure is|bs|ms] [--pre-num N] [--steps N] [--threads N]
#        bench/compare-pytorch.sh --model DIR [--dtype float32|bfloat16] [--batch B] [--seq-len T] [--rank R] [--targets LIST] ...
# Without --model both sides train the bench's own small float32 shape; with --model, an existing Hugging Face folder's
# shape (its weights read in place; bench/scale.sh --peer runs this for a preset), each side in its own process so that
# the peak RSS of each is printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null || ! dpkg -s libopenblas0-pthread >/dev/null 2>&1; then
  echo "installing python3-torch and libopenblas0-pthread (benchmark only)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-torch libopenblas0-pthread >/dev/null
fi
dotnet run --project src/ResLora.Cli -c Release -- bench pytorch --dir "${TMPDIR:-/tmp}/reslora-parity" "$@"
