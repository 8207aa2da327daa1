#!/usr/bin/env bash
# Regenerate README's results table from scratch in one run: `zqtool compare` on the real models in
# ../shared at the cpu budget (ResNet-20 on CIFAR-10, MobileNetV2 on the ImageNet subset), then one
# combined markdown table. Prints the versions, the machine and the date first, and the wall time
# of the whole run (bash `time`) at the end.
#
#   bash examples/compare_readme.sh [OUT_DIR]     (default runs/readme; hours on 2 cores)
#
# "From scratch" means an empty artifact store: OUT_DIR/store. Re-running with the same OUT_DIR
# resumes an interrupted run (finished stages are reused) -- its wall time then is not a from-scratch
# time; the script says which case it is. Override the lists with environment variables, e.g.
#   R20_METHODS=minmax R20_BITS=8 MNV2_METHODS= COMPARE_ARGS="--limit 100" bash examples/compare_readme.sh
# (an empty MNV2_METHODS, R20_METHODS or R20_FT_METHODS skips that part).
# ResNet-20 runs two compares: the calibration methods over every bit width, and the fine-tuning
# methods (zaq ~8 min, lrq ~20 min per pair at the cpu budget) only at the 4 and 3 bits their
# acceptance is about -- at 8 and 6 bits calibration alone is already within noise of FP32.
set -uo pipefail
cd "$(dirname "$0")/.."
S=${ZQTOOL_SHARED:-../shared}
OUT=${1:-runs/readme}
ZQ=${ZQTOOL:-zqtool}
R20_METHODS=${R20_METHODS-minmax,bnstat,gznq}
R20_BITS=${R20_BITS:-8,6,4,3}
R20_FT_METHODS=${R20_FT_METHODS-zaq,lrq}
R20_FT_BITS=${R20_FT_BITS:-4,3}
MNV2_METHODS=${MNV2_METHODS-minmax,bnstat,gznq}
MNV2_BITS=${MNV2_BITS:-8,6}
THREADS=${THREADS:-1,2}              # onnxruntime threads; every pair is verified at each
LAT=${LATENCY_RUNS:-200}             # timed batch-1 runs per model and thread count
BUDGET=${BUDGET:-cpu}
COMPARE_ARGS=${COMPARE_ARGS:-}       # extra arguments for both compares (e.g. --limit 100)
STORE="$OUT/store"

echo "== zqtool compare_readme.sh"
echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "commit:   $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- toolchain recipes 2>/dev/null || echo ' (+ uncommitted changes in toolchain/ or recipes/)')"
python - <<'PY'
import platform
from importlib import metadata
v = lambda p: metadata.version(p)
print(f"python:   {platform.python_version()}  torch {v('torch')}  onnxruntime {v('onnxruntime')}  "
      f"onnx {v('onnx')}  zqtool {v('zqtool')}")
PY
echo "machine:  $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || uname -m), $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) cores, $(uname -sr)"
if [ -d "$STORE" ] && [ -n "$(ls -A "$STORE" 2>/dev/null)" ]; then
  echo "store:    $STORE exists: reusing its cached artifacts (delete $OUT for a from-scratch run)"
else
  echo "store:    $STORE is empty: everything is computed from scratch"
fi
pairs() { if [ -n "$1" ]; then echo "$1 x $2"; else echo skipped; fi; }
echo "settings: ResNet-20 $(pairs "$R20_METHODS" "$R20_BITS") + $(pairs "$R20_FT_METHODS" "$R20_FT_BITS"); MobileNetV2 $(pairs "$MNV2_METHODS" "$MNV2_BITS");" \
     "budget $BUDGET; threads $THREADS; $LAT latency runs${COMPARE_ARGS:+; $COMPARE_ARGS}"

COMMON=(--budget "$BUDGET" --threads "$THREADS" --latency-runs "$LAT" --store "$STORE")
# shellcheck disable=SC2206
EXTRA=($COMPARE_ARGS)
status=0
run() { echo "+ $*"; "$@" || status=$?; }   # a failed pair (exit 1) must not stop the other model

time {
  if [ -n "$R20_METHODS" ]; then
    run $ZQ compare "$S/models/resnet20-12fca82f.th" --arch resnet20 --data "$S/data/cifar10_test_first1017.npz" \
        --methods "$R20_METHODS" --bits "$R20_BITS" "${COMMON[@]}" "${EXTRA[@]}" --out "$OUT/resnet20"
  fi
  if [ -n "$R20_FT_METHODS" ]; then
    run $ZQ compare "$S/models/resnet20-12fca82f.th" --arch resnet20 --data "$S/data/cifar10_test_first1017.npz" \
        --methods "$R20_FT_METHODS" --bits "$R20_FT_BITS" "${COMMON[@]}" "${EXTRA[@]}" --out "$OUT/resnet20-finetune"
  fi
  if [ -n "$MNV2_METHODS" ]; then
    # the cpu recipes' synthetic sets (256 images, 100-250 steps) are sized for 32x32 inputs; at 224x224
    # bnstat and gznq use 32 images x 50 steps (as in baselines.sh); no fine-tuning at 8 and 6 bits
    run $ZQ compare "$S/models/mobilenet_v2-b0353104.pth" --arch mobilenet_v2 --data "$S/data/imagenet_val1300" \
        --methods "$MNV2_METHODS" --bits "$MNV2_BITS" \
        --set bnstat.num_images=32 --set bnstat.batch_size=32 --set bnstat.iterations=50 \
        --set gznq.num_images=32 --set gznq.synthesis.batch_size=32 --set gznq.iterations=50 \
        "${COMMON[@]}" "${EXTRA[@]}" --out "$OUT/mobilenet_v2"
  fi
}

jsons=()
want() { case $1 in resnet20) echo "$R20_METHODS";; resnet20-finetune) echo "$R20_FT_METHODS";; *) echo "$MNV2_METHODS";; esac; }
for m in resnet20 resnet20-finetune mobilenet_v2; do
  [ -f "$OUT/$m/compare.json" ] && [ -n "$(want $m)" ] && jsons+=("$OUT/$m/compare.json")
done
if [ ${#jsons[@]} -gt 0 ]; then
  python examples/results_table.py "${jsons[@]}" > "$OUT/results.md"
  echo
  cat "$OUT/results.md"
  echo
  echo "wrote $OUT/results.md; per model: compare.json, compare.md, compare.png in ${jsons[*]%/compare.json}"
fi
exit $status
