// Compares `reslora tokenize --texts --json` output (one object per text with "ids") with expected.jsonl; prints mismatches.
const fs = require("fs");
const [expectedFile, oursFile] = process.argv.slice(2);
const expected = fs.readFileSync(expectedFile, "utf8").trim().split("\n").map((l) => JSON.parse(l));
const ours = fs.readFileSync(oursFile, "utf8").trim().split("\n").map((l) => JSON.parse(l).ids);
let bad = 0;
if (ours.length !== expected.length) { console.log(`count: ours ${ours.length}, reference ${expected.length}`); process.exit(1); }
for (let i = 0; i < expected.length; i++) {
  if (JSON.stringify(ours[i]) !== JSON.stringify(expected[i])) {
    bad++;
    if (bad <= 5) console.log(`text ${i + 1}: ours ${JSON.stringify(ours[i])}\n        reference ${JSON.stringify(expected[i])}`);
  }
}
console.log(`tokenizer parity: ${expected.length - bad}/${expected.length} texts identical`);
process.exit(bad === 0 ? 0 : 1);
