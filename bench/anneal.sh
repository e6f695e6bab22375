#!/usr/bin/env bash
# ResLoRA shortcut annealing on the demo's task (issue 31, first measurement): the demo's trained base, its
# multiplication word problems (600 train / 100 held out), rank 8, alpha 16, all linear modules, lr 3e-3, 200 steps,
# batch 16, warm-up 20 — the demo's own settings — for LoRA, ResLoRA is/ms, and is/ms with --anneal-shortcuts K.
# For each: held-out accuracy (first 100 held-out questions, greedy) of the unmerged adapter, of the merged model, of
# ResLoRA exported to a plain LoRA by the least-squares fold and by fold + distillation, and how many of each one's
# answers equal the unmerged model's (what a user sees after `reslora merge` / `export`); training wall time.
# --task svamp: the same base fine-tuned on SVAMP (the LLM-Adapters test set in ../shared/data/llm-adapters/SVAMP, or
# --svamp FILE; shuffled with seed 31, 900 train / 100 held out, prompt "Question: ...\nAnswer:", completion " <number>"),
# the issue's setting: rank 4, alpha 8, q_proj,v_proj, lr 2e-3, 300 steps, batch 16; answers compared by their first
# number. --lora-steps N adds LoRA runs of N steps (equal wall time: N = steps × ResLoRA's time / LoRA's time).
# Usage: bench/anneal.sh [--task demo|svamp] [--seeds "7 8 9"] [--anneal "150 200"] [--schedule linear|cosine] [--distill 300]
# [--lora-steps N] [--only "CFG ..."] [--threads N] [--out DIR]; --only runs just the listed configurations (lora, lora@N,
# reslora-is, reslora-ms, reslora-is:K ...). Run it alone (a 2-core machine shared with another job measures that job);
# about 8 minutes per seed here.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="7 8 9"; ANNEAL="150"; SCHEDULE=linear; DISTILL=300; OUT=""; TASK=demo; SVAMP=../shared/data/llm-adapters/SVAMP/test.json
LORA_STEPS=""; THREADS=""; ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --anneal) ANNEAL="$2"; shift 2 ;;
    --distill) DISTILL="$2"; shift 2 ;;
    --schedule) SCHEDULE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --task) TASK="$2"; shift 2 ;;
    --svamp) SVAMP="$2"; shift 2 ;;
    --lora-steps) LORA_STEPS="$2"; shift 2 ;;
    --threads) THREADS="--threads $2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    *) echo "bench/anneal.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$TASK" in
  demo) STEPS=200; TRAINARGS="--rank 8 --alpha 16 --targets all-linear --lr 3e-3 --warmup-steps 20 --seq-len 128"; NEW=4; FIRSTNUM=0 ;;
  svamp) STEPS=300; TRAINARGS="--rank 4 --alpha 8 --targets q_proj,v_proj --lr 2e-3 --warmup-steps 30 --seq-len 256"; NEW=8; FIRSTNUM=1 ;;
  *) echo "bench/anneal.sh: --task must be demo or svamp, got $TASK" >&2; exit 2 ;;
esac
[ -n "$OUT" ] || OUT=reslora-bench/anneal-$TASK
# RESLORA_NO_BUILD=1 uses the Release build as it is (e.g. while another run of this script uses it).
[ -n "${RESLORA_NO_BUILD:-}" ] || dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
mkdir -p "$OUT"
# The demo writes its data and caches its trained base; one LoRA step is enough to get both.
"$R" demo --task lm --methods lora --steps 1 --out "$OUT/demo" > "$OUT/demo.log" 2>&1
BASE=$(grep -o 'Cached at `[^`]*`' "$OUT/demo/report.md" | sed 's/Cached at `\(.*\)`/\1/')
[ -f "$BASE/config.json" ] || { echo "bench/anneal.sh: no demo base found (see $OUT/demo.log)" >&2; exit 1; }
TRAIN="$OUT/demo/data/train.jsonl"; EVAL="$OUT/demo/data/eval.jsonl"
if [ "$TASK" = svamp ]; then
  [ -f "$SVAMP" ] || { echo "bench/anneal.sh: no SVAMP test set at $SVAMP; pass --svamp FILE (LLM-Adapters' dataset/SVAMP/test.json)" >&2; exit 1; }
  TRAIN="$OUT/svamp-train.jsonl"; EVAL="$OUT/svamp-eval.jsonl"
  python3 - "$SVAMP" "$TRAIN" "$EVAL" <<'PY'
import json, random, sys
d = json.load(open(sys.argv[1]))
random.Random(31).shuffle(d)
def rec(r):
    a = float(r["answer"]); a = str(int(a)) if a == int(a) else str(a)
    return json.dumps({"prompt": "Question: " + r["instruction"].strip() + "\nAnswer:", "completion": " " + a}) + "\n"
open(sys.argv[2], "w").write("".join(rec(r) for r in d[:900]))
open(sys.argv[3], "w").write("".join(rec(r) for r in d[900:1000]))
PY
fi
printf '| seed | variant | train s | final train loss | held-out loss | accuracy | = unmerged answers | how it is served |\n|---|---|---|---|---|---|---|---|\n' > "$OUT/table.md"
: > "$OUT/rows.jsonl"
row() { # seed variant dir predictions reference-predictions how
  python3 - "$@" "$FIRSTNUM" >> "$OUT/table.md" <<'PY'
import json, re, sys
seed, name, d, pred, ref, how, firstnum = sys.argv[1:]
def key(x):
    g = x.get("generated") or ""
    if firstnum == "1":
        m = re.search(r"-?\d+(?:\.\d+)?", g)
        return m.group(0) if m else None
    return g
s = json.load(open(d + "/train_summary.json"))
def rows(f): return [json.loads(l) for l in open(f)]
p, r = rows(pred), rows(ref)
acc = sum(1 for x in p if x.get("correct")) / len(p)
agree = sum(1 for a, b in zip(p, r) if key(a) == key(b)) / len(p)
rec = dict(seed=int(seed), variant=name, wall=s.get("wall_seconds"), train_loss=s.get("final_train_loss"), eval_loss=s.get("final_eval_loss"), accuracy=acc, agree=agree, how=how)
open(sys.argv[3].rsplit("/", 1)[0] + "/rows.jsonl", "a").write(json.dumps(rec) + "\n")
print(f"| {seed} | {name} | {rec['wall']:.1f} | {rec['train_loss']:.4f} | {rec['eval_loss']:.4f} | {acc:.0%} | {agree:.0%} | {how} |")
PY
  tail -1 "$OUT/table.md"
}
ev() { # predictions-file eval-args...
  local pred="$1"; shift
  "$R" eval "$@" --data "$EVAL" --accuracy-examples 100 --max-new-tokens "$NEW" $THREADS --predictions "$pred" > "$pred.log" 2>&1
}
for S in $SEEDS; do
  CFGS="lora reslora-is reslora-ms"
  [ -z "$LORA_STEPS" ] || CFGS="$CFGS lora@$LORA_STEPS"
  for K in $ANNEAL; do CFGS="$CFGS reslora-is:$K reslora-ms:$K"; done
  [ -z "$ONLY" ] || CFGS="$ONLY"
  for CFG in $CFGS; do
    RUNSTEPS=$STEPS
    case "$CFG" in lora@*) RUNSTEPS=${CFG#lora@}; CFG=lora ;; esac
    METHOD=${CFG%%:*}; NAME=$METHOD; EXTRA=""
    [ "$RUNSTEPS" = "$STEPS" ] || NAME="$METHOD-${RUNSTEPS}steps"
    if [ "$CFG" != "$METHOD" ]; then NAME="$METHOD-anneal${CFG##*:}"; EXTRA="--anneal-shortcuts ${CFG##*:} --anneal-schedule $SCHEDULE"; [ "$SCHEDULE" = linear ] || NAME="$NAME-$SCHEDULE"; fi
    D="$OUT/s$S-$NAME"; rm -rf "$D" "$D-merged" "$D-fold" "$D-distill"
    # shellcheck disable=SC2086
    "$R" train --model "$BASE" --data "$TRAIN" --eval-data "$EVAL" --method $METHOD $EXTRA $TRAINARGS \
      --steps "$RUNSTEPS" --batch-size 16 --seed "$S" --eval-generate 0 $THREADS --out "$D" > "$D.train.log" 2>&1
    ev "$D.unmerged.jsonl" --model "$BASE" --adapter "$D"
    "$R" merge --model "$BASE" --adapter "$D" --out "$D-merged" > "$D.merge.log" 2>&1
    ev "$D.merged.jsonl" --model "$D-merged"
    KIND=$(grep -oE 'merged [0-9]+ .*? modules' "$D.merge.log" | head -1 | sed -E 's/merged [0-9]+ (.*) modules/\1/')
    if [ "$METHOD" = lora ]; then
      row "$S" "$NAME" "$D" "$D.unmerged.jsonl" "$D.unmerged.jsonl" "adapter"
      row "$S" "$NAME merged" "$D" "$D.merged.jsonl" "$D.unmerged.jsonl" "merged (${KIND:-?})"
      continue
    fi
    row "$S" "$NAME unmerged" "$D" "$D.unmerged.jsonl" "$D.unmerged.jsonl" "adapter with shortcuts"
    row "$S" "$NAME merged" "$D" "$D.merged.jsonl" "$D.unmerged.jsonl" "merged (${KIND:-?})"
    if [ -z "$EXTRA" ]; then
      # (c) the least-squares fold to a plain LoRA and (d) the fold followed by distillation, as `export --as lora` does.
      "$R" export --model "$BASE" --adapter "$D" --as lora --out "$D-fold" > "$D.fold.log" 2>&1
      ev "$D.fold.jsonl" --model "$BASE" --adapter "$D-fold"
      row "$S" "$NAME fold" "$D" "$D.fold.jsonl" "$D.unmerged.jsonl" "export --as lora"
      "$R" export --model "$BASE" --adapter "$D" --as lora --distill "$DISTILL" --out "$D-distill" > "$D.distill.log" 2>&1
      ev "$D.distill.jsonl" --model "$BASE" --adapter "$D-distill"
      row "$S" "$NAME fold+distill" "$D" "$D.distill.jsonl" "$D.unmerged.jsonl" "export --as lora --distill $DISTILL"
    fi
  done
done
# Means over the seeds, one line per variant.
python3 - "$OUT/rows.jsonl" > "$OUT/summary.md" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
order = []
for r in rows:
    if r["variant"] not in order: order.append(r["variant"])
print("| variant | seeds | train s | held-out loss | accuracy (mean ± sd) | = unmerged answers |\n|---|---|---|---|---|---|")
for v in order:
    g = [r for r in rows if r["variant"] == v]
    acc = [r["accuracy"] for r in g]
    sd = st.stdev(acc) if len(acc) > 1 else 0.0
    print(f"| {v} | {len(g)} | {st.mean(r['wall'] for r in g):.1f} | {st.mean(r['eval_loss'] for r in g):.4f} | {st.mean(acc):.1%} ± {sd:.1%} | {st.mean(r['agree'] for r in g):.0%} |")
PY
cat "$OUT/summary.md"
echo "table: $OUT/table.md, means: $OUT/summary.md"
