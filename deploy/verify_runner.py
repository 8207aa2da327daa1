#!/usr/bin/env python3
"""Verify a zqtool QDQ ONNX model on the target device (numpy + onnxruntime only).

Usage:
    python verify_runner.py model.qdq.onnx --data test.npz [--fp model.fp32.onnx]
                            [--threads N] [--json out.json] [--limit N]
                            [--batch-size N] [--runs N] [--warmup N]

Needs the ``toolchain`` package importable: either zqtool installed, or these files
copied next to this script (keeping their paths):

    toolchain/__init__.py  toolchain/errors.py  toolchain/targets.py  toolchain/models/meta.py
    toolchain/data/        toolchain/verify/

Prints the report as a plain-text table; ``--json`` also writes the full report.
Errors are printed on one line to stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

NEEDED = ("toolchain/__init__.py, toolchain/errors.py, toolchain/targets.py, toolchain/models/meta.py, "
          "toolchain/data/, toolchain/verify/")


def _import_verify():
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (here, os.path.dirname(here)):  # beside this script, or the repo root
        if os.path.isdir(os.path.join(path, "toolchain")) and path not in sys.path:
            sys.path.insert(0, path)
    try:
        from toolchain.errors import ZqError
        from toolchain.verify import report_text, verify
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        if missing in ("numpy", "onnxruntime"):
            sys.stderr.write(f"error: {missing} is not installed; run `pip install {missing}`\n")
        else:
            sys.stderr.write(
                f"error: cannot import toolchain.verify ({e}); copy the `toolchain/` folder next to "
                f"this script (only {NEEDED} are needed) or install zqtool\n")
        sys.exit(2)
    return verify, report_text, ZqError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Verify a zqtool QDQ ONNX model with onnxruntime.")
    ap.add_argument("model", help="quantized QDQ .onnx (exported by zqtool)")
    ap.add_argument("--data", required=True, help=".npz (images uint8 NHWC, labels) or folder with labels.csv; "
                    "segmentation model: .npz of images, optionally masks (uint8 NxHxW, 255 = ignore)")
    ap.add_argument("--fp", default=None, help="FP32 reference .onnx (default: model.fp32.onnx beside MODEL)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0 = all cores)")
    ap.add_argument("--json", default=None, help="write the full report to this JSON file")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ap.add_argument("--batch-size", type=int, default=64, help="images per accuracy batch")
    ap.add_argument("--runs", type=int, default=50, help="timed latency runs per model (0 = skip)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    args = ap.parse_args(argv)

    verify, report_text, ZqError = _import_verify()
    try:
        report = verify(args.model, args.data, fp_path=args.fp, threads=args.threads,
                        batch_size=args.batch_size, latency_runs=args.runs, warmup=args.warmup,
                        limit=args.limit)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    except ZqError as e:
        sys.stderr.write(f"error: {e.message}" + (f" (hint: {e.hint})" if e.hint else "") + "\n")
        return 2
    except OSError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(report_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
