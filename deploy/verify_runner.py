#!/usr/bin/env python3
"""Verify a zqtool QDQ ONNX model on the target device (numpy + onnxruntime only).

Usage:
    python verify_runner.py model.qdq.onnx --data test.npz [--fp model.fp32.onnx]
                            [--threads N] [--json out.json] [--limit N]
                            [--batch-size N] [--runs N] [--warmup N]

Needs the ``toolchain`` package importable: either zqtool installed, or these files
copied next to this script (keeping their paths):

    toolchain/__init__.py  toolchain/targets.py
    toolchain/core/        toolchain/data/        toolchain/verify/

Prints the report as a plain-text table; ``--json`` also writes the full report.
Errors are printed on one line to stderr, exit status 2.
"""

from __future__ import annotations

import os
import sys

NEEDED = "toolchain/__init__.py, toolchain/targets.py, toolchain/core/, toolchain/data/, toolchain/verify/"


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (here, os.path.dirname(here)):  # beside this script, or the repo root
        if os.path.isdir(os.path.join(path, "toolchain")) and path not in sys.path:
            sys.path.insert(0, path)
    try:
        from toolchain.verify.device import main as device_main
    except ImportError as e:
        sys.stderr.write(
            f"error: cannot import toolchain.verify ({e}); copy the `toolchain/` folder next to "
            f"this script (only {NEEDED} are needed), install zqtool, or use `zqtool bundle`\n")
        return 2
    return device_main(argv)


if __name__ == "__main__":
    sys.exit(main())
