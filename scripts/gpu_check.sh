#!/usr/bin/env bash
# The GPU check: run once on a machine with a CUDA GPU, from the project root, with Fashion-MNIST reachable
# (LEPTON_DATA, the user cache, the Debian folder, or a download). Writes every figure to $OUT (default gpu_out/):
#   gpu.json  all figures, with the card's name (copy it to benchmarks/gpu.json)
#   log.txt   everything the commands printed
# Uses the machine's own PyTorch; installs nothing (GPU machines may have no registry). Where the GPU machine has no
# copy of the data, carry one: copy the four IDX .gz files into a git-ignored folder and set LEPTON_DATA to it.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PY:-python3}
LOG="$OUT/log.txt"; : > "$LOG"
lepton() { "$PY" -c "import sys; from lepton_nb.cli import main; sys.exit(main())" "$@"; }
step() { echo "== $*" | tee -a "$LOG"; }
last() { tail -n 1 "$1"; }
T0=$(date +%s)

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" > "$OUT/device.txt" 2>>"$LOG"; cat "$OUT/device.txt" >> "$LOG"

step "CUDA tests"
"$PY" -m pytest tests/test_gpu.py -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1; TESTS_RC=$?
echo "rc=$TESTS_RC" >> "$OUT/pytest.txt"; cat "$OUT/pytest.txt" >> "$LOG"
if "$PY" -c "import nbdev" 2>/dev/null; then   # the notebooks' #| gpu cells (01, 02), where nbdev is installed
  step "notebook GPU cells"
  "$PY" -c "from nbdev.test import nbdev_test; nbdev_test(flags='gpu', file_re='0[12]_.*')" >> "$LOG" 2>&1 || TESTS_RC=1
fi

run_json() {  # name, then lepton arguments: keep the last (JSON) line
  local name=$1; shift
  step "lepton $*"
  lepton "$@" --json > "$OUT/$name.out" 2>> "$LOG"; echo "rc=$?" >> "$LOG"
  tail -n 1 "$OUT/$name.out" > "$OUT/$name.json"; rm -f "$OUT/$name.out"
}
run_json train_fast_10 train --device cuda --time-budget 10 --out "$OUT/run_fast_10"
run_json train_fast_60 train --device cuda --time-budget 60 --out "$OUT/run_fast_60"
run_json train_seed train --device cuda --model seed --out "$OUT/run_seed"
if lepton gan --help >/dev/null 2>&1; then run_json gan_120 gan --device cuda --time-budget 120 --out "$OUT/run_gan"; fi
run_json bench bench --device cuda

"$PY" - "$OUT" "$T0" <<'PY' >> "$LOG" 2>&1
import json, sys, time
from pathlib import Path
out, t0 = Path(sys.argv[1]), int(sys.argv[2])
def read(name):
    p = out/f'{name}.json'
    try: return json.loads(p.read_text())
    except Exception: return None
keep = ('test_accuracy', 'f1_macro', 'epochs', 'train_seconds', 'device', 'stop_reason', 'fid', 'fid_floor',
        'classifier_score', 'class_coverage')
res = {'device_name': (out/'device.txt').read_text().strip() if (out/'device.txt').exists() else None,
       'cuda_tests': (out/'pytest.txt').read_text().strip().splitlines()[-2:] if (out/'pytest.txt').exists() else None,
       'wall_seconds': int(time.time()) - t0}
for n in ('train_fast_10', 'train_fast_60', 'train_seed', 'gan_120'):
    r = read(n); res[n] = {k: r[k] for k in keep if r and k in r} if r else None
res['bench'] = read('bench')
(out/'gpu.json').write_text(json.dumps(res, indent=2) + '\n')
print(json.dumps(res, indent=2))
PY
for f in "$OUT"/*.json; do case "$f" in */gpu.json) ;; *) rm -f "$f";; esac; done
rm -rf "$OUT"/run_* "$OUT"/device.txt "$OUT"/pytest.txt
echo "wrote $OUT/gpu.json and $OUT/log.txt"
exit "$TESTS_RC"   # the figures are written either way; a failing CUDA test fails the check
