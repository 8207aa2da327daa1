#!/usr/bin/env bash
# Issue-2 acceptance runs on the real models in ../shared: ResNet-20 (CIFAR-10) with bnstat and
# minmax at W8A8 and W4A4, MobileNetV2 (ImageNet subset) at W8A8; each verified at 1 and 2 threads
# (the 2-thread verify re-uses every cached stage). Then prints the combined table.
#   bash examples/baselines.sh [OUT_DIR]        (needs ../shared; about 10 minutes on 2 cores)
# The full README table (every method and bit width): examples/compare_readme.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${ZQTOOL_SHARED:-../shared}
OUT=${1:-runs/baselines}
ZQ=${ZQTOOL:-zqtool}
LAT=${LATENCY_RUNS:-200}   # timed batch-1 runs per model and thread count
COMMON="--threads 1,2 --latency-runs $LAT --store ${RUNS:-$OUT/runs}"
$ZQ compare "$S/models/resnet20-12fca82f.th" --arch resnet20 --data "$S/data/cifar10_test_first1017.npz" \
    --methods bnstat,minmax --bits 8,4 $COMMON --out "$OUT/resnet20"
# bnstat's cpu recipe (256 images x 100 steps) is sized for 32x32 inputs; at 224x224 use a smaller set
$ZQ compare "$S/models/mobilenet_v2-b0353104.pth" --arch mobilenet_v2 --data "$S/data/imagenet_val1300" \
    --methods minmax,bnstat --bits 8 --set bnstat.num_images=32 --set bnstat.batch_size=32 \
    --set bnstat.iterations=50 $COMMON --out "$OUT/mobilenet_v2"
python examples/results_table.py "$OUT/resnet20/compare.json" "$OUT/mobilenet_v2/compare.json"
