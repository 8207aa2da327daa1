#!/usr/bin/env bash
# Create ./.venv and install zqtool with the CPU build of torch (no CUDA packages), pinned to
# constraints.txt (the versions the README's numbers were measured with).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first, pinned to the CPU build: a bare `torch` requirement would pull several GB of CUDA wheels.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import torch, onnxruntime; print(f'zqtool env ready: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}')"
