#!/bin/sh
# Convert an .onnx model to onnxruntime's ORT format (.ort), for ORT minimal/mobile builds.
#
#   deploy/to_ort_format.sh MODEL.onnx [converter options ...]
#   deploy/to_ort_format.sh model.qdq.onnx --target_platform arm   # converting on x86 for a Pi/phone
#
# Writes MODEL.ort beside the input (and a required_operators config that a
# reduced-operator ORT build takes with --include_ops_by_config). The default
# optimization style "Fixed" runs the graph optimizations (QDQ → QLinearConv fusion
# included) before saving, for the target platform given (default: this machine's).
# Options are passed on to `python -m onnxruntime.tools.convert_onnx_models_to_ort`
# (see its --help). Needs onnxruntime (and onnx) on the converting machine.
set -eu
if [ "$#" -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 MODEL.onnx [converter options ...]  (${1:-no model} not found)" >&2
    exit 2
fi
model=$1
shift
exec "${PYTHON:-python3}" -m onnxruntime.tools.convert_onnx_models_to_ort "$@" "$model"
