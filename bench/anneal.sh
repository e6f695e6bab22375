#!/usr/bin/env bash
# ResLoRA shortcut annealing on the demo's task (issue 31, first measurement): the demo's trained base, its
# multiplication word problems (600 train / 100 held out), rank 8, alpha 16, all linear modules, lr 3e-3, 200 steps,
# batch 16, warm-up 20 — the demo's own settings — for LoRA, ResLoRA is/ms, and is/ms with --anneal-shortcuts K.
# For each: held-out accuracy of the unmerged adapter, of the merged model, and how many of the merged model's answers
# equal the unmerged model's (what a user sees after `reslora merge`).
# Usage: bench/anneal.sh [--seeds "7 8"] [--anneal K] [--out DIR]. Run it alone (a 2-core machine shared with another
# job measures that job); about 10 minutes for two seeds here.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="7 8"; K=50; OUT=reslora-bench/anneal
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --anneal) K="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "bench/anneal.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
mkdir -p "$OUT"
# The demo writes its data and caches its trained base; one LoRA step is enough to get both.
"$R" demo --task lm --methods lora --steps 1 --out "$OUT/demo" > "$OUT/demo.log" 2>&1
BASE=$(grep -o 'Cached at `[^`]*`' "$OUT/demo/report.md" | sed 's/Cached at `\(.*\)`/\1/')
[ -f "$BASE/config.json" ] || { echo "bench/anneal.sh: no demo base found (see $OUT/demo.log)" >&2; exit 1; }
TRAIN="$OUT/demo/data/train.jsonl"; EVAL="$OUT/demo/data/eval.jsonl"
printf '| seed | method | final train loss | held-out loss | accuracy unmerged | accuracy merged | merged = unmerged answers | merge |\n|---|---|---|---|---|---|---|---|\n' > "$OUT/table.md"
for S in $SEEDS; do
  for CFG in "lora" "reslora-is" "reslora-is --anneal-shortcuts $K" "reslora-ms" "reslora-ms --anneal-shortcuts $K"; do
    NAME=$(echo "$CFG" | sed 's/ --anneal-shortcuts /-anneal/')
    D="$OUT/s$S-$NAME"; rm -rf "$D" "$D-merged"
    # shellcheck disable=SC2086
    "$R" train --model "$BASE" --data "$TRAIN" --eval-data "$EVAL" --method $CFG --rank 8 --alpha 16 --targets all-linear \
      --lr 3e-3 --steps 200 --batch-size 16 --warmup-steps 20 --seq-len 128 --seed "$S" --eval-generate 0 --out "$D" > "$D.train.log" 2>&1
    "$R" eval --model "$BASE" --adapter "$D" --data "$EVAL" --accuracy-examples 100 --max-new-tokens 4 --predictions "$D.unmerged.jsonl" > "$D.eval.log" 2>&1
    "$R" merge --model "$BASE" --adapter "$D" --out "$D-merged" > "$D.merge.log" 2>&1
    "$R" eval --model "$D-merged" --data "$EVAL" --accuracy-examples 100 --max-new-tokens 4 --predictions "$D.merged.jsonl" > "$D.evalm.log" 2>&1
    python3 - "$S" "$NAME" "$D" >> "$OUT/table.md" <<'PY'
import json, re, sys
seed, name, d = sys.argv[1:]
summary = json.load(open(d + "/train_summary.json"))
def acc(f):
    rows = [json.loads(l) for l in open(f)]
    return rows, sum(1 for r in rows if r.get("correct")) / len(rows)
u, au = acc(d + ".unmerged.jsonl"); m, am = acc(d + ".merged.jsonl")
agree = sum(1 for a, b in zip(u, m) if a.get("generated") == b.get("generated")) / len(u)
merge = open(d + ".merge.log").read()
kind = re.search(r"merged \d+ (.*?) modules", merge)
print(f"| {seed} | {name} | {summary.get('final_train_loss', float('nan')):.4f} | {summary.get('final_eval_loss', float('nan')):.4f} | {au:.0%} | {am:.0%} | {agree:.0%} | {kind.group(1) if kind else '?'} |")
PY
    tail -1 "$OUT/table.md"
  done
done
echo "table: $OUT/table.md"
