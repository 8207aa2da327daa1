#!/usr/bin/env bash
# How much of a difference between two methods is the seed? ResNet-20 (../shared CIFAR-10, cpu
# budget) at one bit width, each (method, seed) through the whole pipeline (quantize -> QDQ export
# -> onnxruntime verify), then a markdown table: top-1 per seed, mean ± sample std, and each
# method's paired gap to the first (reference) method over the same seeds.
#
#   bash examples/seeds.sh [OUT_DIR]                          (default runs/readme: bnstat, lrq; seeds 0-4; W4A4)
#   METHODS="bnstat gznq" SEEDS="0 1 2" BITS=3 bash examples/seeds.sh
#   METHODS=lrq SET="q_refine_steps=0" bash examples/seeds.sh    (a recipe variant: reported as lrq_q_refine_steps_0)
#
# About 2 min per bnstat run and 20 min per LRQ run on 2 cores (one torch thread each; run two
# invocations side by side with OMP_NUM_THREADS=1 to use both cores). The store is OUT_DIR/store,
# the one examples/compare_readme.sh uses, so its seed-0 rows come from the cache; a finished
# (method, seed) is never recomputed.
set -uo pipefail
cd "$(dirname "$0")/.."
source examples/resnet20_run.sh
OUT=${1:-runs/readme}
METHODS=${METHODS:-bnstat lrq}
SEEDS=${SEEDS:-0 1 2 3 4}
BITS=${BITS:-4}
SET=${SET:-}
set_args=(); label_suffix=""
for kv in $SET; do set_args+=(--set "$kv"); label_suffix+="_${kv//[=.]/_}"; done
mkdir -p "$OUT/seeds"

status=0
time {
  for m in $METHODS; do
    for s in $SEEDS; do
      echo "+ $m$label_suffix W${BITS}A${BITS} seed $s"
      resnet20_run "$OUT/store" "$OUT/seeds/$m$label_suffix-w$BITS-seed$s.json" "$m" "$BITS" --seed "$s" \
        "${set_args[@]}" || status=$?
    done
  done
}

python examples/seed_table.py "$OUT/seeds" "$BITS" $(for m in $METHODS; do echo "$m$label_suffix"; done)
exit $status
