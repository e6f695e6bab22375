"""Trains a SentencePiece unigram model and writes it as a Hugging Face tokenizer.json folder (bench only).

Usage: spm_to_json.py CORPUS OUT_DIR [--byte-fallback] [--style deberta|xlmr]
--style deberta (default) follows what transformers' DebertaV2Converter (an SpmConverter) writes for a DeBERTa-v3
.model: normalizer Sequence[Strip, Precompiled(charsmap), Replace(" {2,}" -> " ")] and a Metaspace pre-tokenizer
(prepend_scheme "always" when add_dummy_prefix). --style xlmr follows the layout of XLM-RoBERTa's published
tokenizer.json: Sequence[Precompiled, Replace(" {2,}" -> " ")] and Sequence[WhitespaceSplit, Metaspace]. Both have a
Metaspace decoder, a Unigram model ([piece, score] list, unk_id, byte_fallback) and a TemplateProcessing post-processor
[CLS] $A [SEP] / [CLS] $A [SEP] $B [SEP]. The .model protobuf is read by hand (wire format): no protobuf package needed.
"""
import base64, json, os, struct, sys

import sentencepiece as spm


def fields(buf):
    """(field number, wire type, value) of one protobuf message; values of length-delimited fields are bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, val


def varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def read_model(path):
    """sentencepiece_model.proto: ModelProto.pieces (1), trainer_spec (2), normalizer_spec (3)."""
    data = open(path, "rb").read()
    pieces, trainer, normalizer = [], {}, {"add_dummy_prefix": True}
    for num, _, val in fields(data):
        if num == 1:  # SentencePiece: piece (1), score (2, float), type (3; 1 normal, 2 unknown, 3 control, 4 user, 6 byte)
            p = {"score": 0.0, "type": 1}
            for n, _, v in fields(val):
                if n == 1: p["piece"] = v.decode("utf-8")
                elif n == 2: p["score"] = struct.unpack("<f", v)[0]
                elif n == 3: p["type"] = v
            pieces.append(p)
        elif num == 2:  # TrainerSpec: byte_fallback (35), unk_id (40)
            for n, _, v in fields(val):
                if n == 35: trainer["byte_fallback"] = bool(v)
                elif n == 40: trainer["unk_id"] = v
        elif num == 3:  # NormalizerSpec: name (1), precompiled_charsmap (2), add_dummy_prefix (3)
            for n, _, v in fields(val):
                if n == 1: normalizer["name"] = v.decode()
                elif n == 2: normalizer["charsmap"] = v
                elif n == 3: normalizer["add_dummy_prefix"] = bool(v)
    return pieces, trainer, normalizer


def tokenizer_json(pieces, trainer, normalizer, style):
    specials = [i for i, p in enumerate(pieces) if p["type"] in (2, 3)]
    scheme = "always" if normalizer["add_dummy_prefix"] else "never"
    norms = [{"type": "Strip", "strip_left": True, "strip_right": True}] if style == "deberta" else []
    if normalizer.get("charsmap"):
        norms.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(normalizer["charsmap"]).decode()})
    norms.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    meta = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": True}
    cls, sep = pieces.index(next(p for p in pieces if p["piece"] == "[CLS]")), pieces.index(next(p for p in pieces if p["piece"] == "[SEP]"))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": pieces[i]["piece"], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i in specials],
        "normalizer": {"type": "Sequence", "normalizers": norms},
        "pre_tokenizer": meta if style == "deberta" else {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, meta]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}},
        },
        "decoder": dict(meta),
        "model": {"type": "Unigram", "unk_id": trainer.get("unk_id", 0),
                  "vocab": [[p["piece"], p["score"]] for p in pieces], "byte_fallback": trainer.get("byte_fallback", False)},
    }


def main():
    corpus, out = sys.argv[1], sys.argv[2]
    byte_fallback = "--byte-fallback" in sys.argv
    style = sys.argv[sys.argv.index("--style") + 1] if "--style" in sys.argv else "deberta"
    os.makedirs(out, exist_ok=True)
    prefix = os.path.join(out, "spm")
    # DeBERTa-v3's layout: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK] a control symbol; nmt_nfkc makes a real charsmap.
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=2000, model_type="unigram", normalization_rule_name="nmt_nfkc",
        character_coverage=0.9995, byte_fallback=byte_fallback, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]", control_symbols=["[MASK]"],
        num_threads=1, minloglevel=2)
    pieces, trainer, normalizer = read_model(prefix + ".model")
    assert normalizer.get("charsmap"), "nmt_nfkc should give a precompiled charsmap"
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(pieces, trainer, normalizer, style), f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "[CLS]", "eos_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "add_bos_token": False}, f)
    print(f"{out}: {style} layout, {len(pieces)} pieces, byte_fallback {trainer.get('byte_fallback', False)}, charsmap {len(normalizer['charsmap'])} bytes")


if __name__ == "__main__":
    main()
