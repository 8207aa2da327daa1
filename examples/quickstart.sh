#!/usr/bin/env bash
# One command, fresh machine: install, then run the whole pipeline on the embedded default
# (tinynet trained here on scikit-learn's digits → bnstat W8A8 and W4A4 → QDQ ONNX → verify).
set -euo pipefail
cd "$(dirname "$0")/.."
bash examples/install.sh
.venv/bin/zqtool demo "$@"
