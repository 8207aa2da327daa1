#!/usr/bin/env bash
# The W4A4 ablations of the zero-shot methods on ResNet-20 (../shared CIFAR-10, cpu budget), each
# variant through the whole pipeline (quantize -> QDQ export -> onnxruntime verify), then one
# markdown table per method:
#
#   bash examples/ablations.sh [OUT_DIR]          (default runs/readme; ~10-25 min per variant on 2 cores)
#   METHODS=gznq bash examples/ablations.sh       (one method only)
#
#   gznq: the recipe; bn_loss = "l2" (ZeroQ's BN loss instead of the Gaussian KL);
#         reparameterize = false (point images); finetune = "off" (calibration only)
#   lrq:  the recipe; lka = false (GDFQ's generator); ama_margin = 0 (no angular margin);
#         distill = "kd" (plain KD instead of DKD); q_refine_steps = 0 (Q learns from the
#         generator's raw images); calib_refine_steps = 0 (calibration on the generator's raw images)
#
# The store is OUT_DIR/store, the one examples/compare_readme.sh uses, so the recipe rows (and
# GZNQ's synthetic set, shared by finetune = "off") are reused when that script ran first.
set -uo pipefail
cd "$(dirname "$0")/.."
source examples/resnet20_run.sh
OUT=${1:-runs/readme}
METHODS=${METHODS:-gznq lrq}
BITS=${BITS:-4}
mkdir -p "$OUT/ablations"

declare -A VARIANTS=(
  [gznq]="recipe|bn_loss=l2|reparameterize=false|finetune=off"
  [lrq]="recipe|lka=false|ama_margin=0.0|distill=kd|q_refine_steps=0|calib_refine_steps=0"
)

status=0
time {
  for m in $METHODS; do
    IFS='|' read -ra vs <<< "${VARIANTS[$m]:?no ablation variants for $m}"
    for v in "${vs[@]}"; do
      set_args=(); [ "$v" != recipe ] && set_args=(--set "$v")
      echo "+ $m W${BITS}A${BITS} ${v}"
      resnet20_run "$OUT/store" "$OUT/ablations/$m-w$BITS-${v//[=.]/_}.json" "$m" "$BITS" "${set_args[@]}" \
        || status=$?
    done
  done
}

python - "$OUT/ablations" $METHODS <<'PY'
import json, sys
from pathlib import Path
out, methods = Path(sys.argv[1]), sys.argv[2:]
for m in methods:
    files = sorted(out.glob(f"{m}-w*.json"), key=lambda p: (("recipe" not in p.name), p.name))
    if not files:
        continue
    print(f"\n| {m} variant (ResNet-20, cpu budget) | W/A | QDQ top-1 | Δ vs FP32 | agree % | quantize s |")
    print("|---|---|---|---|---|---|")
    for f in files:
        r = json.loads(f.read_text())
        q, s = r["quantize"], r["quantize"]["scheme"]
        variant = f.stem.split("-", 2)[2]
        print(f"| {variant} | W{s['wbits']}A{s['abits']} | {r['quantized']['top1']:.2f} ± {r['top1_stderr']:.2f} | "
              f"{-r['top1_drop']:+.2f} | {r['agreement_top1']:.2f} | {q['method_s']:.0f} |")
PY
exit $status
