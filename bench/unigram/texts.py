"""Writes the training corpus and the check texts for bench/unigram-check.sh (bench only).

Usage: texts.py DATA_DIR OUT_DIR COUNT
corpus.txt: instructions of the llm-adapters data sets and a few lines in other scripts (not the repo's docs, so the
models and the counts do not move when the docs change);
texts.jsonl: COUNT texts, one JSON string a line: corpus sentences plus made-up texts with accents, combining marks,
full-width and compatibility characters (what nmt_nfkc rewrites), emoji, scripts the small vocabulary lacks (unknown
runs), control and zero-width characters and runs of spaces, tabs and newlines.
"""
import glob, json, os, random, sys

data_dir, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
lines = []
for path in sorted(glob.glob(os.path.join(data_dir, "*", "test.json"))):
    for rec in json.load(open(path, encoding="utf-8"))[:300]:
        lines.extend(l for l in rec.get("instruction", "").split("\n") if l.strip())
world = [
    "Le café de la gare est fermé le dimanche, mais la crêperie reste ouverte.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein, sagte der Pilot.",
    "El niño comió paella en la playa de Valencia con su señora madre.",
    "Москва — столица России, а Санкт-Петербург — культурная столица.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "東京は日本の首都です。今日は天気がいいですね。",
    "北京是中国的首都，人口很多。",
    "서울은 대한민국의 수도입니다.",
]
lines.extend(world * 20)
with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")

special = [
    "ＡＢＣ ｄｅｆ １２３ ！？", "ｶﾀｶﾅ ﾃｽﾄ", "café naïve résumé Ångström", "e\u0301 a\u0308 n\u0303 (combining marks)",
    "ﬁne ﬂow ﬀ ligatures", "x² + y³ = z⁴, H₂O", "① ② ③ Ⅻ ⅷ", "1½ cups, ¼ teaspoon", "…ellipsis… and “quotes” ‘single’",
    "emoji 😀 👍🏽 🇫🇷 👨‍👩‍👧 ❤️", "tabs\tand\t\tmore\ttabs", "new\nlines\n\nand\r\nCRLF", "many     spaces   between",
    "   leading spaces", "trailing spaces   ", "\u00a0non-breaking\u00a0spaces\u00a0", "zero\u200bwidth\u200cjoiners\u200d",
    "soft\u00adhyphen", "control\u0001chars\u0007here", "ideographic\u3000space", "Ωmega ℃ ℉ ™ ℡ №", "㍻ ㌔ ㎏ ㎞",
    "Hangul 한국어 ᄒᆞᆫ글", "עברית ועוד", "العربية لغة جميلة", "हिन्दी भाषा", "ไทย ภาษา", "ქართული ენა",
    "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 𝔉𝔯𝔞𝔨𝔱𝔲𝔯", "math ∀x∈ℝ: x²≥0 ⇒ √x", "¡Hola! ¿Qué tal?", "Straße groß GRÖSSE", "İstanbul ılık",
    "", " ", "a", "▁already▁has▁meta▁symbols", "[UNK] and [MASK]-like text", "<0x41> looks like a byte piece",
    "ＡＢ  Ｃ\t\tＤ\u3000\u3000Ｅ", "Ǆ ǅ ǆ ĳ Ŀ", "ｈｅｌｌｏ　ｗｏｒｌｄ", "￥１００ ＄５ ￡３", "😀😀😀😀", "ꙮ ꙮ ꙮ", "𓀀𓀁 hieroglyphs",
]
pool = [l for l in lines if 5 < len(l) < 400]
rng.shuffle(pool)
alphabet = list("abcdefgh éüñçø  \t\nＡＢ１ﬁ²①😀日本語한Ωπ\u0301\u200b\u00a0\u3000…")
texts = list(special)
i = 0
while len(texts) < count:
    kind = len(texts) % 4
    if kind == 0 or kind == 1:
        texts.append(pool[i % len(pool)]); i += 1
    elif kind == 2:  # a corpus line with made-up characters spliced in
        s = pool[i % len(pool)]; i += 1
        k = rng.randrange(len(s) + 1)
        texts.append(s[:k] + rng.choice(special) + s[k:])
    else:
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
with open(os.path.join(out, "texts.jsonl"), "w", encoding="utf-8") as f:
    for t in texts[:count]:
        f.write(json.dumps(t, ensure_ascii=False) + "\n")
print(f"{out}: corpus {len(lines)} lines, {min(count, len(texts))} check texts")
