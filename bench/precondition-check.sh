#!/usr/bin/env bash
# PrecLoRA's Riemannian preconditioner (--precondition riemannian) and a LoRA+ AdamW step against an independent
# PyTorch computation of PEFT's formulas (issue 35; benchmark only, never needed by the build or the tests).
# Installs Debian's python3-torch if missing; runs the one test that preconditions fixed random pairs
# (RiemannianPreconditionerTests.PeerCase_…) with RESLORA_PRECONDITION_PEER_OUT pointing at a temporary JSON file, then
# recomputes everything in bench/pytorch/precondition_peer.py. Exit 0 when every difference is <= --tol.
# Usage: bench/precondition-check.sh [--tol 1e-6]
set -euo pipefail
cd "$(dirname "$0")/.."
exec bench/pytorch/peer-check.sh bench/precondition-check.sh RESLORA_PRECONDITION_PEER_OUT \
  RiemannianPreconditionerTests.PeerCase_MatchesGaussJordan_AndIsWrittenForThePyTorchPeer \
  bench/pytorch/precondition_peer.py "$@"
