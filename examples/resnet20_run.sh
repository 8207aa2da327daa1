# Sourced by examples/ablations.sh and examples/seeds.sh: one ResNet-20 run through the whole
# pipeline with the flags both use, so their runs (and compare_readme.sh's, in the same store)
# share cached artifacts.
#
#   resnet20_run STORE JSON METHOD BITS [zqtool run options...]
#
# ZQTOOL_SHARED (default ../shared) and ZQTOOL (default zqtool) as in the other scripts; the
# run's report goes to JSON, its progress to stderr; returns zqtool's exit status.
resnet20_run() {
  local store=$1 json=$2 method=$3 bits=$4
  shift 4
  local shared=${ZQTOOL_SHARED:-../shared}
  ${ZQTOOL:-zqtool} run "$shared/models/resnet20-12fca82f.th" --arch resnet20 \
    --data "$shared/data/cifar10_test_first1017.npz" --method "$method" --bits "$bits" "$@" --budget cpu \
    --threads 1 --latency-runs 20 --parity-images 0 --out "$store" --json "$json" >/dev/null
}
