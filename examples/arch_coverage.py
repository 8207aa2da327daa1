#!/usr/bin/env python3
"""Benchmark: which architectures zqtool takes, through all four stages, on onnxruntime.

Runs every ``.pt2`` archive in ``../shared/models/arch/`` (torchvision architectures with random
weights — see ``../shared/README.md``: they test the graph, not accuracy) through
``zqtool run`` as W8 minmax, W8 bnstat and W4 bnstat, and prints one markdown table:
ops that stayed float, Conv/Gemm nodes running as integer kernels / total, the torch-vs-onnxruntime
agreement on the deployed model (ORT_ENABLE_ALL vs the integer-exact simulation; per pixel for the
segmentation model), the share of output codes identical to the simulation, and QDQ / FP32
latency (batch 1, 1 thread, p50).

Evaluation images: the first ``--images`` of ``../shared/data/imagenet_val1300`` centre-cropped
from 227×227 to 224×224 into a temporary npz (labels kept for classifiers, images only for the
segmentation model). Quantization reads no data; bnstat's synthetic set is small here
(``--set``; default 16 images × 20 steps) because the weights are random anyway.

Usage:
    .venv/bin/python examples/arch_coverage.py [--images 64] [--store /tmp/zq-arch] [--json out.json]
        [--only mobilenet_v3_small ...] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
RUNS = (("minmax", 8), ("bnstat", 8), ("bnstat", 4))


def eval_sets(n: int, tmp: Path) -> tuple[Path, Path]:
    """(classification npz with labels, images-only npz) of n centre-cropped 224×224 val images."""
    from PIL import Image
    root = SHARED / "data" / "imagenet_val1300"
    rows = list(csv.DictReader(open(root / "labels.csv")))[:n]
    images = []
    for r in rows:
        im = Image.open(root / "images" / r["file"]).convert("RGB")
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        images.append(np.asarray(im.crop((left, top, left + 224, top + 224))))
    cls, seg = tmp / "val224.npz", tmp / "val224_images.npz"
    np.savez(cls, images=np.stack(images), labels=np.array([int(r["label"]) for r in rows], np.int64))
    np.savez(seg, images=np.stack(images))
    return cls, seg


def row(arch: str, method: str, bits: int, r) -> dict:
    """The table row of one :class:`~toolchain.reports.RunReport`."""
    ops, lat, q = r.verify.integer_ops, r.verify.latency_ms, r.quantize
    on = r.parity.on if r.parity else None
    floats = {**q.float_ops, **q.unknown_ops}
    return {"arch": arch, "method": method, "bits": bits,
            "float_ops": ", ".join(f"{k} ×{v}" for k, v in sorted(floats.items(), key=lambda kv: -kv[1])) or "—",
            "unknown_ops": q.unknown_ops,
            "conv_integer": ops.conv_integer, "conv_total": ops.conv_total,
            "float_nodes": [n.name for n in ops.float_nodes if n.op_type in ("Conv", "Gemm")],
            "agreement": on and on.agreement_top1, "identical": on and on.identical,
            "max_diff_lsb": on and on.max_diff_lsb,
            "qdq_ms": lat.quantized and lat.quantized.p50, "fp32_ms": lat.fp32 and lat.fp32.p50}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "zq-arch"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--parity-images", type=int, default=64)
    ap.add_argument("--latency-runs", type=int, default=50)
    a = ap.parse_args()
    archives = sorted((SHARED / "models" / "arch").glob("*.pt2"))
    if not archives:
        sys.exit(f"no archives in {SHARED / 'models' / 'arch'}: this benchmark needs ../shared")
    if a.only:
        archives = [p for p in archives if p.stem in a.only]

    from toolchain.artifacts import Store
    from toolchain.core.errors import ZqError
    from toolchain.methods.config import parse_overrides
    from toolchain.pipeline import run
    from toolchain.quant.scheme import QuantScheme

    synth = parse_overrides(a.set or ["num_images=16", "batch_size=16", "iterations=20"])
    store = Store(a.store)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cls_npz, seg_npz = eval_sets(a.images, Path(tmp))
        for path in archives:
            for method, bits in RUNS:
                data = seg_npz if path.stem.startswith("seg_") else cls_npz
                try:
                    r = run(path, data, method=method, scheme=QuantScheme.from_bits(bits),
                            overrides=synth if method == "bnstat" else None, latency_runs=a.latency_runs,
                            parity_images=a.parity_images, store=store)
                    rows.append(row(path.stem, method, bits, r))
                except ZqError as e:
                    rows.append({"arch": path.stem, "method": method, "bits": bits, "error": e.message})
                print(f"# {path.stem} {method} W{bits}: {rows[-1].get('error') or 'ok'}", file=sys.stderr, flush=True)
    print("| architecture | method | bits | ops in float | integer Conv/Gemm | torch-vs-ORT agree % | "
          "identical codes % | QDQ / FP32 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['arch']} | {r['method']} | {r['bits']} | error: {r['error']} | | | | |")
            continue
        print(f"| {r['arch']} | {r['method']} | W{r['bits']}A{r['bits']} | {r['float_ops']} | "
              f"{r['conv_integer']}/{r['conv_total']} | {r['agreement']:.2f} | {r['identical']:.2f} | "
              f"{r['qdq_ms']:.2f} / {r['fp32_ms']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
