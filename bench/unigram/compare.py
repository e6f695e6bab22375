"""Compares `reslora tokenize --texts --json` ids with sentencepiece's own encoding of the same texts (bench only).

Usage: compare.py SPM_MODEL TEXTS_JSONL OURS_JSONL
Every text must give sentencepiece's ids, except where Hugging Face tokenizers itself, run on the tokenizer.json that
transformers' converter writes, differs from sentencepiece; those are counted by cause, never hidden:
  added    the text spells an added token ([UNK], [MASK]) or a byte piece (<0x41>): tokenizers splits added tokens out
           first and keeps byte pieces in its Unigram trie; sentencepiece does neither;
  tie      both segmentations spell the same text with the same total score in double precision (tokenizers keeps the
           first path found; sentencepiece compares a double candidate with a float-rounded best, so a tie can flip);
  trailing ours ends in one extra lone "▁": a trailing character that the charsmap maps to a space (U+200B) after the
           converter's Strip, which sentencepiece's whitespace removal drops and the tokenizer.json keeps.
Anything else is a mismatch: printed with its pieces, and the exit code is 1.
"""
import json, re, sys

import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
texts = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
ours = [json.loads(l)["ids"] for l in open(sys.argv[3], encoding="utf-8") if l.strip()]
assert len(texts) == len(ours), f"{len(ours)} results for {len(texts)} texts"
added = re.compile(r"\[(UNK|MASK|CLS|SEP|PAD)\]|<0x[0-9A-F]{2}>")
space = sp.piece_to_id("\u2581")
counts = {"identical": 0, "added": 0, "tie": 0, "trailing": 0, "mismatch": 0}


def score(ids):
    return sum(float(sp.get_score(i)) for i in ids)


for i, (t, o) in enumerate(zip(texts, ours)):
    ref = sp.encode(t)
    if ref == o:
        kind = "identical"
    elif added.search(t):
        kind = "added"
    elif "".join(sp.id_to_piece(x) for x in o) == "".join(sp.id_to_piece(x) for x in ref) and score(o) == score(ref):
        kind = "tie"
    elif o[:-1] == ref and o[-1] == space:
        kind = "trailing"
    else:
        kind = "mismatch"
    counts[kind] += 1
    if kind != "identical" and (kind == "mismatch" or counts[kind] <= 1):
        print(f"[{kind}] text {i + 1} {json.dumps(t, ensure_ascii=False)}\n  ours {[sp.id_to_piece(x) for x in o]}\n  spm  {[sp.id_to_piece(x) for x in ref]}")
print(f"unigram parity ({sys.argv[3]}): {counts['identical']}/{len(texts)} texts identical to sentencepiece; "
      f"known tokenizer.json differences: {counts['added']} added-token/byte-piece spellings, {counts['tie']} exact ties, "
      f"{counts['trailing']} trailing zero-width; unexplained mismatches: {counts['mismatch']}")
sys.exit(1 if counts["mismatch"] else 0)
