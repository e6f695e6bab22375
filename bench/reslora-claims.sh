#!/usr/bin/env bash
# ResLoRA's claim, measured fairly (docs/benchmarks.md): LoRA and ResLoRA is/bs/ms on the demo task over several
# seeds, each at the shared default and after the same (lr, alpha) sweep; prints mean ± spread per method.
# Usage: [METHODS=lora,reflora] [CACHE=dir] bench/reslora-claims.sh [SEEDS...]   (default seeds 1 2 3)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-${TMPDIR:-/tmp}/reslora-claims}
SEEDS=${*:-1 2 3}
mkdir -p "$OUT"
for s in $SEEDS; do
  dotnet run --project src/ResLora.Cli -c Release -- demo --task lm --sweep ${STEPS:+--steps "$STEPS"} --methods "${METHODS:-lora,reslora-is,reslora-bs,reslora-ms}" --seed "$s" --out "$OUT/seed$s" ${CACHE:+--cache "$CACHE"} > "$OUT/seed$s.log" 2>&1
done
python3 - "$OUT" $SEEDS <<'PY'
import json, statistics as st, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = {}
for s in seeds:
    for r in json.load(open(f"{out}/seed{s}/results.json")):
        rows.setdefault(r["method"], []).append(r)
def ms(v):
    v = [x for x in v if x is not None]
    return f"{st.mean(v):.4f} ± {st.pstdev(v):.4f}" if v else "-"
print(f"| method | eval loss (default) | train loss @ early step (default) | steps to LoRA's final (default; n reached) | eval loss (best of sweep) | accuracy (best) |")
print("|---|---|---|---|---|---|")
for m, v in rows.items():
    reach = [r["steps_to_lora_final"] for r in v]
    got = [x for x in reach if x is not None]
    print(f"| {m} | {ms([r['default_setting']['eval_loss'] for r in v])} | {ms([r['loss_at_early_step'] for r in v])} | "
          f"{(f'{st.mean(got):.0f}' if got else '-')} ({len(got)}/{len(v)}) | {ms([r['best_setting']['eval_loss'] for r in v])} | "
          f"{ms([r['best_setting']['accuracy'] for r in v])} |")
PY
