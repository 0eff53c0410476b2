#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU, from the project root. Writes every figure to $OUT (default gpu_out/):
#   gpu.json  every figure, with the card's name, rewritten after each step (scripts/gpu_record.py merges the
#             gpu.json of one or more calls into benchmarks/gpu.json)
#   log.txt   everything the commands printed
#   *.png     the fast 60 s run's curves and the GAN's samples and progress
#
#   scripts/gpu_check.sh                  every step, in order, while time is left
#   scripts/gpu_check.sh fast10 gan120    only these steps
#
# Steps, in this order: device tests fast10 fast60 gan120 seed60; variants of the fast recipe (fast10_w16, the CPU's
# short-budget width; fast10_w64 fast60_w64); bench (--quick: the runs' histories give the time to 91%); more variants
# (fast60_w128 fast60_w64_b512). Each step has a time it may take (NEED below); a step that would not end within
# DEADLINE_S seconds of the start is skipped and listed in gpu.json.
# Data: LEPTON_DATA, the user cache, the Debian folder, or a download; a GPU machine without any of them needs the four
# IDX .gz files carried in (say in .gpu_data/, which git ignores) and LEPTON_DATA set to them. A user cache carried in
# (LEPTON_CACHE) brings its FID classifier along, so the GAN is scored by the network of the machine that trained it.
# Uses the machine's own PyTorch; installs nothing (GPU machines may have no registry). Give each call its own OUT:
# a call rewrites OUT/gpu.json with its own steps only.
# Dry run on a CPU: DEVICE=cpu SCALE=0.1 scripts/gpu_check.sh fast10 gan120 (budgets times SCALE).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; SCALE=${SCALE:-1}; DEADLINE_S=${DEADLINE_S:-3000}
LOG="$OUT/log.txt"; touch "$LOG"
RAW="$OUT/raw"; rm -rf "$RAW"; mkdir -p "$RAW"   # each step's files (none left from a call cut short), folded, removed
T0=$(date +%s); TESTS_RC=0
secs() { awk -v s="$SCALE" -v b="$1" 'BEGIN { v = b * s; printf "%g", (v < 1 ? 1 : v) }'; }
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }

summarize() { "$PY" scripts/gpu_record.py fold "$RAW" "$OUT/gpu.json" >> "$LOG" 2>&1; }   # gpu.json from the steps so far

step_device() {
  timeout -k 5 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1
  timeout -k 5 "${NEED[device]}" "$PY" - > "$RAW/device.json" 2>> "$LOG" <<'PY'
import json, os, platform, torch
c = torch.cuda.is_available()
print(json.dumps({'name': torch.cuda.get_device_name(0) if c else platform.processor() or 'cpu',
                  'capability': list(torch.cuda.get_device_capability(0)) if c else None,
                  'memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if c else None,
                  'torch': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),
                  'cpu_cores': os.cpu_count()}))
PY
  cat "$RAW/device.json" >> "$LOG"
}
step_tests() {
  timeout -k 10 "${NEED[tests]}" "$PY" -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs > "$RAW/tests.txt" 2>&1; local rc=$?
  echo "rc=$rc" >> "$RAW/tests.txt"; cat "$RAW/tests.txt" >> "$LOG"; [ $rc = 0 ] || TESTS_RC=1
  if "$PY" -c "import nbdev" 2>/dev/null; then   # the notebooks' #| gpu cells (01, 02), where nbdev is installed
    timeout -k 10 "${NEED[tests]}" "$PY" -c "from nbdev.test import nbdev_test; nbdev_test(flags='gpu', file_re='0[12]_.*')" \
      >> "$LOG" 2>&1 || TESTS_RC=1
  else echo "nbdev is not installed here: the notebooks' #| gpu cells were not run" >> "$LOG"; fi
}
run_json() {   # name, then lepton's arguments (a run folder is added but for bench): keep the last (JSON) line
  local name=$1 out=(); shift
  [ "$name" = bench ] || out=(--out "$OUT/run_$name")
  echo "lepton $*" > "$RAW/$name.cmd"; echo "   lepton $*" | tee -a "$LOG"
  timeout -k 10 "${NEED[$name]}" "$PY" -c "import sys; from lepton_nb.cli import main; sys.exit(main())" "$@" ${out[@]+"${out[@]}"} \
    --json > "$RAW/$name.out" 2>> "$LOG"; echo "rc=$?" >> "$LOG"
  tail -n 1 "$RAW/$name.out" > "$RAW/$name.json"; rm -f "$RAW/$name.out"
}
train() {   # name, budget, extra arguments
  local name=$1 b; b=$(secs "$2"); shift 2
  run_json "$name" train --device "$DEVICE" --time-budget "$b" "$@"
}

# the most seconds each step may take (it is stopped then), and what must be left of DEADLINE_S for it to start
declare -A NEED=([device]=20 [tests]=180 [fast10]=45 [fast60]=100 [gan120]=200 [seed60]=100 [bench]=200
                 [fast10_w16]=45 [fast10_w64]=45 [fast60_w64]=100 [fast60_w128]=100 [fast60_w64_b512]=100)
ALL="device tests fast10 fast60 gan120 seed60 fast10_w16 fast10_w64 fast60_w64 bench fast60_w128 fast60_w64_b512"
STEPS=${*:-$ALL}
for s in $STEPS; do [ -n "${NEED[$s]:-}" ] || { echo "unknown step $s: choose from $ALL" >&2; exit 2; }; done
for s in $STEPS; do
  if [ "$(left)" -lt "${NEED[$s]}" ]; then echo "== $s: skipped, $(left) s left" | tee -a "$LOG"; echo "$s" >> "$RAW/skipped.txt"; continue; fi
  echo "== $s ($(( $(date +%s) - T0 )) s)" | tee -a "$LOG"
  case $s in
    device) step_device ;;
    tests) step_tests ;;
    fast10) train fast10 10 ;;
    fast60) train fast60 60 ;;
    fast10_w16) train fast10_w16 10 --width 16 ;;
    fast10_w64) train fast10_w64 10 --width 64 ;;
    fast60_w64) train fast60_w64 60 --width 64 ;;
    fast60_w128) train fast60_w128 60 --width 128 ;;
    fast60_w64_b512) train fast60_w64_b512 60 --width 64 --batch-size 512 --lr 0.02 ;;
    seed60) train seed60 60 --model seed ;;
    gan120) run_json gan120 gan --device "$DEVICE" --time-budget "$(secs 120)" ;;
    bench) run_json bench bench --device "$DEVICE" --quick ;;   # time to 91%: the runs' histories
  esac
  summarize
done
summarize
for f in run_fast60/curves.png run_gan120/samples.png run_gan120/progress.png; do
  [ -f "$OUT/$f" ] && cp "$OUT/$f" "$OUT/$(dirname "$f" | sed 's/^run_//')_$(basename "$f")"
done
rm -rf "$OUT"/run_* "$RAW"
echo "wrote $OUT/gpu.json and $OUT/log.txt ($(( $(date +%s) - T0 )) s)"
head -c 6000 "$OUT/gpu.json"
exit "$TESTS_RC"   # the figures are written either way; a failing CUDA test fails the check
