#!/usr/bin/env bash
# Preference losses (DPO, IPO, ORPO, SimPO) and per-sequence log-probabilities against an independent PyTorch
# computation from the papers' formulas (issue 34; benchmark only, never needed by the build or the tests).
# Installs Debian's python3-torch if missing; runs the one test that computes every loss on fixed random pairs
# (PreferenceLossesTests.PeerCase_…) with RESLORA_PREFERENCE_PEER_OUT pointing at a temporary JSON file, then
# recomputes everything in float64 in bench/pytorch/preference_peer.py. Exit 0 when every difference is <= --tol.
# Usage: bench/preference-check.sh [--tol 1e-6]
set -euo pipefail
cd "$(dirname "$0")/.."
exec bench/pytorch/peer-check.sh bench/preference-check.sh RESLORA_PREFERENCE_PEER_OUT \
  PreferenceLossesTests.PeerCase_MatchesScalarFormulas_AndIsWrittenForThePyTorchPeer \
  bench/pytorch/preference_peer.py "$@"
