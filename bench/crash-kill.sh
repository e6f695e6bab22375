#!/usr/bin/env bash
# A real kill at every rename and fsync of a short training run: strace delivers SIGKILL at the Nth such syscall
# (-e inject), the run is then resumed as a user would (--resume, or a plain restart before the first checkpoint), and
# every kill point must end with the adapter files of an uninterrupted run, byte for byte, and no temporary files.
# The in-process version of this check is tests/ResLora.Tests/Pipelines/CrashSafetyTests.cs (docs/reliability.md).
# Usage: bench/crash-kill.sh [OUT]   MODEL=hf-folder DATA=file.jsonl (default: the demo's base model and data, as
# bench/rolora.sh), RESLORA="command" (default: a Release build of this checkout), STEPS (4).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace > /dev/null || { echo "needs strace" >&2; exit 2; }
OUT=${1:-${TMPDIR:-/tmp}/reslora-crash-kill}
MODEL=${MODEL:-$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/reslora/demo-base-???????????????? 2>/dev/null | head -1)}
DATA=${DATA:-reslora-demo/data/train.jsonl}
[ -d "$MODEL" ] || { echo "no model folder; run ./reslora demo first or set MODEL" >&2; exit 2; }
[ -f "$DATA" ] || { echo "no $DATA; run ./reslora demo first or set DATA" >&2; exit 2; }
if [ -z "${RESLORA:-}" ]; then
  dotnet build src/ResLora.Cli -c Release -v q -nologo > /dev/null
  RESLORA="dotnet src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli.dll"
fi
# strace counts each syscall separately (when=N is the Nth fsync, or the Nth rename), so the two kinds are swept apart.
KINDS=(fsync,fdatasync rename,renameat,renameat2)
ARGS=(train --model "$MODEL" --data "$DATA" --steps "${STEPS:-4}" --save-every 2 --batch-size 4 --eval-fraction 0.25 --eval-generate 0 --threads 1)
FILES=(adapter_model.safetensors adapter_config.json reslora_data.json)
rm -rf "$OUT"; mkdir -p "$OUT"
# shellcheck disable=SC2086
$RESLORA "${ARGS[@]}" --out "$OUT/whole" > "$OUT/whole.log" 2>&1
fail=0; total=0; resumed=0; restarted=0
for kind in "${KINDS[@]}"; do
  n=0
  while true; do
    n=$((n + 1)); d="$OUT/kill-${kind%%,*}-$n"
    # The subshell (stderr discarded) waits for strace, so the shell's "Killed" notice, expected here, is not shown.
    # shellcheck disable=SC2086
    if (strace -f -qq -o /dev/null -e trace=$kind -e inject=$kind:signal=KILL:when=$n $RESLORA "${ARGS[@]}" --out "$d" > /dev/null 2>&1; exit $?) 2> /dev/null; then
      rm -rf "$d"; break # no Nth such call: every point of this kind was tried
    fi
    total=$((total + 1))
    if [ -d "$d/checkpoint" ] || [ -d "$d/checkpoint.prev" ]; then again=(--resume); resumed=$((resumed + 1)); else again=(); restarted=$((restarted + 1)); fi
    # shellcheck disable=SC2086
    if ! $RESLORA "${ARGS[@]}" --out "$d" "${again[@]}" > "$d.log" 2>&1; then
      echo "kill at ${kind%%,*} $n: the second run failed: $(tail -1 "$d.log")"; fail=1; continue
    fi
    for f in "${FILES[@]}"; do cmp -s "$OUT/whole/$f" "$d/$f" || { echo "kill at ${kind%%,*} $n: $f differs from the uninterrupted run's"; fail=1; }; done
    left=$(find "$d" -maxdepth 1 \( -name '.*.tmp-*' -o -name '.*.old-*' -o -name 'checkpoint.prev' \) -printf '%f ')
    [ -z "$left" ] || { echo "kill at ${kind%%,*} $n: left $left"; fail=1; }
    rm -rf "$d" "$d.log"
  done
done
echo "$total kill points (SIGKILL at each fsync and each rename): $resumed resumed, $restarted restarted; $([ $fail = 0 ] && echo 'all byte-identical to the uninterrupted run' || echo 'FAILURES above')"
exit $fail
