#!/usr/bin/env bash
# Data-parallel training over MPI (docs/distributed.md), measured on this machine: for each method, the bytes each rank
# all-reduces per step, the largest loss difference between 2 ranks and 1 process (same global batch), and the 2-rank
# scaling efficiency: strong (same global batch: T1 / (2·T2)) and weak (twice the global batch: T1(B) / T2(2B)).
# Then the analytic adapter sizes of the 1B presets (LoRA r16 on q,k,v,o) that docs/benchmarks.md extrapolates from.
# Usage: bench/mpi-scaling.sh [OUT]   MODEL=hf-folder (default: the demo's base model, as bench/rolora.sh),
# RESLORA="command" (default: a Release build of this checkout), STEPS (60), BATCH (16), METHODS (see below).
# Needs mpirun (apt-get install openmpi-bin libopenmpi-dev); as root it passes --allow-run-as-root.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mpirun > /dev/null || { echo "needs mpirun: apt-get install openmpi-bin libopenmpi-dev" >&2; exit 2; }
OUT=${1:-${TMPDIR:-/tmp}/reslora-mpi-scaling}
MODEL=${MODEL:-$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/reslora/demo-base-???????????????? 2>/dev/null | head -1)}
[ -d "$MODEL" ] || { echo "no model folder; run ./reslora demo first or set MODEL" >&2; exit 2; }
STEPS=${STEPS:-60}; BATCH=${BATCH:-16}
METHODS=${METHODS:-"lora reslora-is reslora-bs reslora-ms reflora adalora dora loha lokr ia3"}
if [ -z "${RESLORA:-}" ]; then
  dotnet build src/ResLora.Cli -c Release -v q -nologo > /dev/null
  RESLORA="src/ResLora.Cli/bin/Release/net10.0/ResLora.Cli"
fi
MPI=(mpirun --bind-to none --oversubscribe --mca btl self,vader,tcp --mca btl_tcp_if_include lo)
[ "$(id -u)" = 0 ] && MPI+=(--allow-run-as-root)
rm -rf "$OUT"; mkdir -p "$OUT"
# A deterministic arithmetic data set (prompt/completion), so nothing is downloaded.
awk 'BEGIN { srand(3); for (i = 0; i < 512; i++) { a = int(rand() * 50); b = int(rand() * 50);
  printf("{\"prompt\":\"What is %d plus %d?\\nAnswer:\",\"completion\":\" %d\"}\n", a, b, a + b) } }' > "$OUT/train.jsonl"

method_args() {
  case $1 in
    reslora-*) echo "--method reslora --structure ${1#reslora-} --targets q_proj,k_proj,v_proj,o_proj" ;;
    adalora) echo "--method adalora --targets q_proj,k_proj,v_proj,o_proj" ;;
    *) echo "--method $1 --targets q_proj,k_proj,v_proj,o_proj" ;;
  esac
}
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ''))" "$1" "$2"; }
maxdiff() {
  python3 - "$1" "$2" << 'PY'
import json, sys
def losses(d):
    return {r["step"]: r["loss"] for r in map(json.loads, open(d + "/metrics.jsonl")) if "loss" in r}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print(f"{max(abs(a[s] - b[s]) / max(1e-12, abs(a[s])) for s in a):.1e}")
PY
}

COMMON=(--model "$MODEL" --data "$OUT/train.jsonl" --steps "$STEPS" --log-every 1 --eval-fraction 0 --threads 1 --save-every 0 --lr 1e-3)
echo "| method | trainable params | all-reduced per step | max rel. loss diff 2 ranks vs 1 | step 1 proc (s) | step 2 ranks, same batch (s) | of it in all-reduce (s) | strong eff. | step 2 ranks, 2x batch (s) | weak eff. |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for m in $METHODS; do
  # shellcheck disable=SC2046
  $RESLORA train "${COMMON[@]}" --batch-size "$BATCH" $(method_args "$m") --out "$OUT/$m-1" > "$OUT/$m-1.log" 2>&1
  # shellcheck disable=SC2046
  "${MPI[@]}" -np 2 $RESLORA train "${COMMON[@]}" --batch-size "$BATCH" $(method_args "$m") --out "$OUT/$m-2" > "$OUT/$m-2.log" 2>&1
  # shellcheck disable=SC2046
  "${MPI[@]}" -np 2 $RESLORA train "${COMMON[@]}" --batch-size $((2 * BATCH)) $(method_args "$m") --out "$OUT/$m-2w" > "$OUT/$m-2w.log" 2>&1
  p=$(field "$OUT/$m-1/train_summary.json" trainable_parameters)
  bytes=$(field "$OUT/$m-2/train_summary.json" allreduce_bytes_per_step)
  t1=$(field "$OUT/$m-1/train_summary.json" mean_step_seconds)
  t2=$(field "$OUT/$m-2/train_summary.json" mean_step_seconds)
  t2w=$(field "$OUT/$m-2w/train_summary.json" mean_step_seconds)
  tar=$(field "$OUT/$m-2/train_summary.json" allreduce_seconds_per_step)
  python3 -c "
import sys
p, b, t1, t2, t2w, d, tar = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6], float(sys.argv[8])
print(f'| {sys.argv[7]} | {p:,} | {b / 1024:,.1f} KiB | {d} | {t1:.4f} | {t2:.4f} | {tar:.4f} | {t1 / (2 * t2):.0%} | {t2w:.4f} | {t1 / t2w:.0%} |')
" "$p" "$bytes" "$t1" "$t2" "$t2w" "$(maxdiff "$OUT/$m-1" "$OUT/$m-2")" "$m" "$tar"
done

# The 1B presets: LoRA r on q,k,v,o has r·(in + out) parameters per projection; float32 gradients, 4 bytes each.
python3 - << 'PY'
presets = {"TinyLlama-1.1B": (22, 2048, 256), "Llama-3.2-1B": (16, 2048, 512)}
r = 16
print("\n| preset (LoRA r16 on q,k,v,o) | trainable params | all-reduced per step |")
print("|---|---:|---:|")
for name, (layers, hidden, kv) in presets.items():
    per_layer = r * ((hidden + hidden) + (hidden + kv) + (hidden + kv) + (hidden + hidden))
    p = layers * per_layer
    print(f"| {name} | {p:,} | {4 * p / 1e6:.1f} MB |")
PY
echo; echo "logs and run folders: $OUT; machine: $(nproc) cores, $(uname -m); load: $(cut -d' ' -f1-3 /proc/loadavg)"
