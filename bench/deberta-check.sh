#!/usr/bin/env bash
# ResLora's DeBERTa-v2/v3 against a PyTorch peer written from transformers' modeling_deberta_v2 semantics
# (bench/pytorch/deberta_ref.py, Debian python3-torch). For a v3-style folder (shared keys, log buckets, normed relative
# embeddings, 3 classes) and a v2-style one (separate positional projections, absolute positions, token types, embed_proj,
# clamped distances, regression head): the peer writes a tiny random DebertaV2ForSequenceClassification folder and texts of
# up to 102 tokens (beyond the bucket range); ResLora evaluates it (`reslora eval --predictions`, batched with padding) and
# embeds it (`reslora embed --pooling cls|mean`); the peer recomputes each text alone and prints the largest differences.
# Usage: bench/deberta-check.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=reslora-bench/deberta-check
[ "${1:-}" = "--out" ] && OUT="$2"
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
PY=/usr/bin/python3
rc=0
for V in "v3 3" "v2 1"; do
  set -- $V; D="$OUT/$1"; rm -rf "$D"
  $PY bench/pytorch/deberta_ref.py make "$D" --variant "$1" --labels "$2" --seed 5
  "$R" eval --model "$D" --data "$D/data.jsonl" --batch-size 4 --predictions "$D/predictions.jsonl" --threads 1 > "$D/eval.log"
  "$R" embed --model "$D" --data "$D/data.jsonl" --pooling cls --out "$D/cls.jsonl" --threads 1 2> /dev/null
  "$R" embed --model "$D" --data "$D/data.jsonl" --pooling mean --out "$D/mean.jsonl" --threads 1 2> /dev/null
  echo "== $1 ($( [ "$2" = 1 ] && echo regression || echo "$2 classes" ))"
  $PY bench/pytorch/deberta_ref.py check "$D" "$D/predictions.jsonl" "$D/cls.jsonl" "$D/mean.jsonl" || rc=1
done
exit $rc
