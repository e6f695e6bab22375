#!/usr/bin/env bash
# PrecLoRA's Riemannian preconditioner (--precondition riemannian) and a LoRA+ AdamW step against an independent
# PyTorch computation of PEFT's formulas (issue 35; benchmark only, never needed by the build or the tests).
# Installs Debian's python3-torch if missing; runs the one test that preconditions fixed random pairs
# (RiemannianPreconditionerTests.PeerCase_…) with RESLORA_PRECONDITION_PEER_OUT pointing at a temporary JSON file, then
# recomputes everything in bench/pytorch/precondition_peer.py. Exit 0 when every difference is <= --tol.
# Usage: bench/precondition-check.sh [--tol 1e-6]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  echo "installing python3-torch (benchmark only)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-torch >/dev/null
fi
TOL=1e-6
while [ $# -gt 0 ]; do
  case "$1" in
    --tol) TOL="$2"; shift 2 ;;
    *) echo "bench/precondition-check.sh: unknown argument $1 (--tol X)" >&2; exit 2 ;;
  esac
done
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
RESLORA_PRECONDITION_PEER_OUT="$W/case.json" dotnet test tests/ResLora.Tests -nologo -v q \
  --filter "FullyQualifiedName~RiemannianPreconditionerTests.PeerCase_MatchesGaussJordan_AndIsWrittenForThePyTorchPeer" >"$W/test.log" 2>&1 \
  || { tail -30 "$W/test.log" >&2; echo "bench/precondition-check.sh: the ResLora side failed (log above)" >&2; exit 1; }
[ -s "$W/case.json" ] || { echo "bench/precondition-check.sh: the test wrote no $W/case.json" >&2; exit 1; }
/usr/bin/python3 bench/pytorch/precondition_peer.py --case "$W/case.json" --tol "$TOL"
