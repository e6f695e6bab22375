#!/usr/bin/env bash
# RoLoRA vs LoRA under weight-activation quantization on the demo model (docs/benchmarks.md).
# Usage: bench/rolora.sh [OUT]   (needs the demo base model: run `./reslora demo` or `./reslora demo --quick` first,
# or set BASE=path/to/model and DATA=path/to/folder with train.jsonl and eval.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${TMPDIR:-/tmp}/reslora-rolora-bench}
BASE=${BASE:-$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/reslora/demo-base-???????????????? 2>/dev/null | head -1)}
DATA=${DATA:-reslora-demo/data}
STEPS=${STEPS:-200}
[ -d "$BASE" ] || { echo "no demo base model; run ./reslora demo first or set BASE" >&2; exit 2; }
[ -f "$DATA/train.jsonl" ] || { echo "no $DATA/train.jsonl; run ./reslora demo first or set DATA" >&2; exit 2; }
rm -rf "$OUT"; mkdir -p "$OUT"
R="dotnet run --project src/ResLora.Cli -c Release --"
# PLANT_FACTOR=50 plants function-preserving outliers (4 channels of every RMSNorm output ×50) first: the demo model
# has none of the massive activation outliers of real LLMs that RoLoRA targets.
if [ -n "${PLANT_FACTOR:-}" ]; then
  $R bench plant-outliers --model "$BASE" --out "$OUT/planted-base" --channels 4 --factor "$PLANT_FACTOR" > /dev/null
  BASE="$OUT/planted-base"
fi
$R train --model "$BASE" --data "$DATA/train.jsonl" --eval-data "$DATA/eval.jsonl" --method lora --targets q_proj,v_proj --rank 16 --alpha 16 --lr 3e-3 --steps "$STEPS" --batch-size 16 --out "$OUT/lora" > "$OUT/lora.log" 2>&1
$R train --model "$BASE" --data "$DATA/train.jsonl" --eval-data "$DATA/eval.jsonl" --method rolora --targets q_proj,v_proj --rank 16 --alpha 16 --lr 3e-3 --steps "$STEPS" --batch-size 16 --out "$OUT/rolora" > "$OUT/rolora.log" 2>&1
$R merge --model "$BASE" --adapter "$OUT/lora" --out "$OUT/lora-merged" > /dev/null
$R merge --model "$OUT/rolora/rotated-base" --adapter "$OUT/rolora" --out "$OUT/rolora-merged" > /dev/null
echo "| model | W16A16 | W8A8 RTN | W6A6 RTN | W4A4 RTN | W4A4 GPTQ |"
echo "|---|---|---|---|---|---|"
for m in lora rolora; do
  row="| $m |"
  for q in "16 16 rtn" "8 8 rtn" "6 6 rtn" "4 4 rtn" "4 4 gptq"; do
    set -- $q
    r=$($R eval --model "$OUT/$m-merged" --data "$DATA/eval.jsonl" --wbits "$1" --abits "$2" --wquant "$3" --calib "$DATA/train.jsonl" --max-new-tokens 4 2>/dev/null | tail -1)
    loss=$(echo "$r" | sed -E 's/.*loss ([0-9.]+).*/\1/'); acc=$(echo "$r" | sed -E 's/.*accuracy ([0-9.]+ ?%).*/\1/')
    row="$row loss $loss, acc $acc |"
  done
  echo "$row"
done
echo
echo "kurtosis of linear inputs, base vs rotated base (first layer shown in full in $OUT/kurtosis-*.txt):"
head -c 0 /dev/null
python3 - "$DATA/eval.jsonl" "$OUT/text.jsonl" <<'PY' 2>/dev/null || awk '{print}' "$DATA/eval.jsonl" > "$OUT/text.jsonl"
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as o:
    for line in f:
        r = json.loads(line); o.write(json.dumps({"text": r["prompt"] + r["completion"]}) + "\n")
PY
$R inspect --model "$BASE" --kurtosis --data "$OUT/text.jsonl" > "$OUT/kurtosis-base.txt"
$R inspect --model "$OUT/rolora/rotated-base" --kurtosis --data "$OUT/text.jsonl" > "$OUT/kurtosis-rotated.txt"
grep -E "layers\.[0-9]+\." "$OUT/kurtosis-base.txt" | sed 's/^/base    /' | head -20
grep -E "layers\.[0-9]+\." "$OUT/kurtosis-rotated.txt" | sed 's/^/rotated /' | head -20
