#!/usr/bin/env bash
# The shared body of the PyTorch peer checks (bench/preference-check.sh, bench/precondition-check.sh): installs Debian's
# python3-torch if missing (benchmark only), runs one test with ENVVAR pointing at a temporary JSON file the test writes
# its case to, then recomputes the case with the peer script. Exit 0 when every difference is <= --tol (default 1e-6).
# Usage: bench/pytorch/peer-check.sh NAME ENVVAR TEST_FILTER PEER_SCRIPT [--tol X]
set -euo pipefail
NAME=$1 VAR=$2 FILTER=$3 PEER=$4; shift 4
cd "$(dirname "$0")/../.."
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
    *) echo "$NAME: unknown argument $1 (--tol X)" >&2; exit 2 ;;
  esac
done
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
env "$VAR=$W/case.json" dotnet test tests/ResLora.Tests -nologo -v q --filter "FullyQualifiedName~$FILTER" >"$W/test.log" 2>&1 \
  || { tail -30 "$W/test.log" >&2; echo "$NAME: the ResLora side failed (log above)" >&2; exit 1; }
[ -s "$W/case.json" ] || { echo "$NAME: the test wrote no $W/case.json" >&2; exit 1; }
/usr/bin/python3 "$PEER" --case "$W/case.json" --tol "$TOL"
