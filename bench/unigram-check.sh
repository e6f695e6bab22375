#!/usr/bin/env bash
# Unigram (SentencePiece) tokenizer parity: Debian's python3-sentencepiece trains two small unigram models (2,000
# pieces, nmt_nfkc normalization so the tokenizer.json carries a real Precompiled charsmap; one with byte fallback) on
# the llm-adapters instructions (and a few lines in other scripts), bench/unigram/spm_to_json.py writes each as a tokenizer.json the
# way transformers' DebertaV2Converter does (and the unk model also in XLM-R's layout), and `reslora tokenize --texts`
# must give sentencepiece's ids on each of 240 texts (accents, full-width, emoji, unknown scripts, whitespace runs),
# apart from the differences Hugging Face tokenizers itself has on such a tokenizer.json (bench/unigram/compare.py
# counts them by cause).
# Usage: bench/unigram-check.sh   (UNIGRAM_WORK=DIR keeps the models and texts there; installs python3-sentencepiece with apt when missing). Exit 0 when all agree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
if ! $PY -c "import sentencepiece" 2>/dev/null; then
  echo "installing python3-sentencepiece (check only)" >&2
  apt-get install -y -q python3-sentencepiece >&2 || { apt-get update -q >&2 && apt-get install -y -q python3-sentencepiece >&2; }
fi
DATA="${RESLORA_DATA:-/work/shared/data/llm-adapters}"
dotnet build src/ResLora.Cli -c Release -v q -nologo >&2
R=src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli
if [ -n "${UNIGRAM_WORK:-}" ]; then W="$UNIGRAM_WORK"; mkdir -p "$W"; else W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; fi
$PY bench/unigram/texts.py "$DATA" "$W" 240
status=0
for variant in unk:deberta unk:xlmr byte-fallback:deberta; do
  bf=${variant%%:*} style=${variant##*:}
  M="$W/$bf-$style"
  $PY bench/unigram/spm_to_json.py "$W/corpus.txt" "$M" --style "$style" $([ "$bf" = byte-fallback ] && echo --byte-fallback)
  "$R" tokenize --model "$M" --texts "$W/texts.jsonl" --json > "$W/ours-$bf-$style.jsonl"
  $PY bench/unigram/compare.py "$M/spm.model" "$W/texts.jsonl" "$W/ours-$bf-$style.jsonl" || status=1
done
exit $status
