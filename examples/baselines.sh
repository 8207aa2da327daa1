#!/usr/bin/env bash
# Issue-2 acceptance runs on the real models in ../shared: ResNet-20 (CIFAR-10) with bnstat and
# minmax at W8A8 and W4A4, MobileNetV2 (ImageNet subset) at W8A8; each at 1 and 2 threads
# (the 2-thread run re-uses every cached stage and re-runs only verify). Then prints the table.
#   bash examples/baselines.sh [OUT_DIR]        (needs ../shared; about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
S=${ZQTOOL_SHARED:-../shared}
OUT=${1:-runs/baselines}
ZQ=${ZQTOOL:-zqtool}
LAT=${LATENCY_RUNS:-200}   # timed batch-1 runs per model and thread count
mkdir -p "$OUT"
R20="$S/models/resnet20-12fca82f.th --arch resnet20 --data $S/data/cifar10_test_first1017.npz"
MNV2="$S/models/mobilenet_v2-b0353104.pth --arch mobilenet_v2 --data $S/data/imagenet_val1300"
for t in 1 2; do
  for m in bnstat minmax; do for b in 8 4; do
    $ZQ run $R20 --method $m --bits $b --threads $t --latency-runs $LAT --json "$OUT/resnet20_${m}_w${b}_t${t}.json" --out "${RUNS:-$OUT/runs}"
  done; done
  $ZQ run $MNV2 --method minmax --bits 8 --threads $t --latency-runs $LAT --json "$OUT/mobilenet_v2_minmax_w8_t${t}.json" --out "${RUNS:-$OUT/runs}"
  # bnstat's cpu recipe (256 images x 100 steps) is sized for 32x32 inputs; at 224x224 use a smaller set
  $ZQ run $MNV2 --method bnstat --bits 8 --set num_images=32 --set batch_size=32 --set iterations=50 \
      --threads $t --latency-runs $LAT --json "$OUT/mobilenet_v2_bnstat_w8_t${t}.json" --out "${RUNS:-$OUT/runs}"
done
python examples/results_table.py "$OUT"/*.json
