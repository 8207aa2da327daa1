#!/usr/bin/env bash
# Build zqtool's wheel, install it into a fresh venv (not editable, no checkout on the path) and check
# that it works there: `zqtool demo`, and a method run with --budget cpu whose recorded settings are the
# shipped cpu recipe's. Fails on a setuptools deprecation warning in the build. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

echo "== wheel: build"
"$PY" -m pip wheel --no-deps -w "$W/dist" . > "$W/build.log" 2>&1 || { cat "$W/build.log"; exit 1; }
if grep -i -E "deprecat" "$W/build.log"; then
  echo "wheel_check: the build printed a deprecation warning (above)"; exit 1
fi
WHEEL=$(ls "$W"/dist/zqtool-*.whl)
echo "built $(basename "$WHEEL")"

echo "== wheel: install into a fresh venv"
"$PY" -m venv "$W/venv"
"$W/venv/bin/python" -m pip install -q -c "$ROOT/constraints.txt" "torch==2.13.0"
"$W/venv/bin/python" -m pip install -q -c "$ROOT/constraints.txt" "${WHEEL}[demo]"

cd "$W"   # nothing of the checkout on the path from here on
"$W/venv/bin/python" - <<'EOF'
import toolchain, toolchain.methods.recipes as r
assert "site-packages" in toolchain.__file__, toolchain.__file__
for m in ("minmax", "bnstat", "gznq", "zaq", "lrq"):
    for b in r.BUDGETS:
        assert r.load_recipe(m, b), (m, b)
print("recipes shipped:", r.recipe_origin("gznq"), "…")
EOF

echo "== wheel: zqtool demo"
"$W/venv/bin/zqtool" demo --out "$W/demo" --bits 8 > "$W/demo.log" 2>&1 || { cat "$W/demo.log"; exit 1; }
grep -E "parity|quantized " "$W/demo.log" | tail -3

echo "== wheel: a method with --budget cpu uses the shipped cpu recipe"
Q=$("$W/venv/bin/zqtool" quantize "$W/demo/tinynet-digits.pt" --arch tinynet --method bnstat --bits 4 \
     --budget cpu --set iterations=3 --out "$W/runs" 2> "$W/quantize.log" | tail -1) \
     || { cat "$W/quantize.log"; exit 1; }
grep "recipe" "$W/quantize.log"
"$W/venv/bin/python" - "$Q" <<'EOF'
import json, sys, tomllib
from importlib import resources
q = json.load(open(f"{sys.argv[1]}/quant.json"))
def flat(d, prefix=""):  # {"synthesis": {"iterations": 3}} -> {"synthesis.iterations": 3}
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
recipe = flat(tomllib.loads((resources.files("toolchain.recipes") / "bnstat.toml").read_text())["cpu"])
assert q["recipe"]["budget"] == "cpu" and q["recipe"]["file"].endswith("site-packages/toolchain/recipes/bnstat.toml"), q["recipe"]
cfg = flat(q["method_config"])
for k, v in recipe.items():
    if k != "synthesis.iterations":  # set on the command line (--set iterations=3); every other value is the recipe's
        assert cfg[k] == v, (k, cfg[k], v)
assert cfg["synthesis.iterations"] == 3 and recipe["synthesis.iterations"] != 3
print("cpu recipe applied:", {k: cfg[k] for k in recipe})
EOF
echo "== wheel: a device bundle's verifier runs from the installed package, outside any checkout"
"$W/venv/bin/zqtool" bundle "$Q" --out "$W/bundle" > "$W/bundle.log" 2>&1 || { cat "$W/bundle.log"; exit 1; }
python3 -c "import zipfile, sys; n = zipfile.ZipFile(sys.argv[1]).namelist(); assert 'toolchain/verify/device.py' in n, n" \
    "$W/bundle/verify.pyz"
(cd "$W" && "$W/venv/bin/python" bundle/verify.pyz --help > /dev/null) || { echo "verify.pyz --help failed"; exit 1; }
echo "bundle ok: $(ls "$W/bundle" | tr '\n' ' ')"
echo "wheel_check: ok"
