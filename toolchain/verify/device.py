"""The device-side verifier: ``python3 verify.pyz model.qdq.onnx --data test.npz`` (numpy + onnxruntime).

The command a bundle (``zqtool bundle``) runs on the target CPU, and what
``deploy/verify_runner.py`` calls from a source checkout: the same report as ``zqtool verify``
(accuracy, agreement, latency, integer-kernel census, CPU model and ISA flags) as a plain-text
table and JSON. ``--save-outputs FILE.npz`` also stores the quantized model's outputs (float32
(N, K) logits, kept during the accuracy pass, not recomputed) and top-1 classes, so a run on the device can be compared output by output with
the same bundle run on the host (``deploy/check_arm64.sh``).

Never imports torch. Errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _imports():
    """(verify, report_text, ZqError), or exit 2 naming the missing package."""
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        name = getattr(e, "name", None) or "numpy/onnxruntime"
        sys.stderr.write(f"error: {name} is not installed; run `python3 -m pip install numpy onnxruntime` "
                         "(Pillow too for image folders)\n")
        sys.exit(2)
    from ..core.errors import ZqError
    from .report import report_text
    from .runner import verify
    return verify, report_text, ZqError


class OutputRecorder:
    """Keeps the quantized model's outputs as :func:`~.runner.verify` computes them (its ``on_outputs``
    hook): one pass over the data serves the report and ``--save-outputs``."""

    def __init__(self, model: str = "quantized"):
        self.model, self.batches = model, []

    def __call__(self, name: str, outputs) -> None:
        if name == self.model:
            self.batches.append(outputs)

    def save(self, path: str) -> int:
        """Write ``outputs`` float32 (N, K) and ``top1`` int64 (N,) to ``path`` (.npz); returns N."""
        import numpy as np
        y = np.concatenate(self.batches).astype(np.float32)
        np.savez(path, outputs=y, top1=y.argmax(axis=1).astype(np.int64))
        return len(y)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="verify.pyz", description="Verify a zqtool QDQ ONNX model with onnxruntime "
                                 "on this CPU (numpy + onnxruntime only).",
                                 epilog="example: python3 verify.pyz model.qdq.onnx --data test.npz --threads 4 "
                                        "--json report.json")
    ap.add_argument("model", help="quantized QDQ .onnx or .ort (exported by zqtool)")
    ap.add_argument("--data", required=True, help=".npz (images uint8 NHWC, labels) or folder with labels.csv; "
                    "segmentation model: .npz of images, optionally masks (uint8 NxHxW, 255 = ignore)")
    ap.add_argument("--fp", default=None, help="FP32 reference .onnx (default: model.fp32.onnx beside MODEL; "
                    "'none' skips it)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0 = all cores)")
    ap.add_argument("--json", default=None, help="write the full report to this JSON file")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ap.add_argument("--batch-size", type=int, default=64, help="images per accuracy batch")
    ap.add_argument("--runs", type=int, default=50, help="timed latency runs per model (0 = skip)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    ap.add_argument("--save-outputs", default=None,
                    help="also write the quantized model's outputs and top-1 classes to this .npz")
    args = ap.parse_args(argv)
    verify, report_text, ZqError = _imports()
    try:
        recorder = OutputRecorder() if args.save_outputs else None
        report = verify(args.model, args.data, fp_path=args.fp, threads=args.threads,
                        batch_size=args.batch_size, latency_runs=args.runs, warmup=args.warmup,
                        limit=args.limit, on_outputs=recorder)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report.to_dict(), f, indent=2)
        if recorder is not None:
            if not recorder.batches:
                raise ZqError("--save-outputs keeps classifier logits; this model's outputs are per-pixel",
                              "compare segmentation runs by their JSON reports")
            recorder.save(args.save_outputs)
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
