#!/usr/bin/env python3
"""Benchmark: what a user gets without zqtool — onnxruntime's own `quantize_static` on the same FP32 model.

Quantizes zqtool's FP32 reference (``model.fp32.onnx``, the BN-folded float model) with
``onnxruntime.quantization.quantize_static`` — QDQ format, per-channel weights, MinMax
calibration on ``--calib`` Gaussian-noise inputs N(0, 1) in the normalized input space (no
data: the same zero-shot setting as zqtool) — in three variants:

- ``U8S8 reduce_range``: uint8 activations, int8 weights in 7 bits (onnxruntime's advice for
  x86 CPUs without VNNI);
- ``U8S8``: full 8-bit weights;
- ``S8S8``: int8 activations and weights;

then verifies each with ``toolchain.verify.verify`` on the eval data (top-1, agreement with
FP32, batch-1 latency at ``--threads``), beside zqtool's own QDQ models given with ``--zqtool``
(label=path pairs), and prints one markdown table.

Usage:
    .venv/bin/python examples/ort_quantize_static.py ONNX_DIR DATA [--calib 256] [--threads 1]
        [--zqtool "zqtool bnstat W8A8 portable=ONNX_DIR_A/model.qdq.onnx" ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class NoiseReader:
    """CalibrationDataReader of ``n`` N(0, 1) inputs of shape (1, C, H, W), seeded."""

    def __init__(self, name: str, shape, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = iter([{name: rng.standard_normal((1, *shape)).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.items, None)


def ort_quantize(fp32: Path, out: Path, variant: str, n_calib: int) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    m = onnx.load(str(fp32))
    inp = m.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    act, reduce = {"U8S8 reduce_range": (QuantType.QUInt8, True), "U8S8": (QuantType.QUInt8, False),
                   "S8S8": (QuantType.QInt8, False)}[variant]
    quantize_static(str(fp32), str(out), NoiseReader(inp.name, shape, n_calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce, activation_type=act, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    q = onnx.load(str(out))  # keep zqtool's model card so verify preprocesses the data the same way
    have = {p.key for p in q.metadata_props}
    for p in m.metadata_props:
        if p.key not in have:
            q.metadata_props.add(key=p.key, value=p.value)
    onnx.save(q, str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx_dir", type=Path, help="a zqtool export dir (its model.fp32.onnx is quantized)")
    ap.add_argument("data")
    ap.add_argument("--calib", type=int, default=256, help="Gaussian-noise calibration inputs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--zqtool", action="append", default=[], help="LABEL=path/to/model.qdq.onnx (repeatable)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from toolchain.verify import verify
    fp32 = a.onnx_dir / "model.fp32.onnx"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(z.split("=", 1)[0], Path(z.split("=", 1)[1])) for z in a.zqtool]
        for variant in ("U8S8 reduce_range", "U8S8", "S8S8"):
            out = Path(tmp) / f"{variant.replace(' ', '_')}.onnx"
            ort_quantize(fp32, out, variant, a.calib)
            models.append((f"quantize_static {variant} ({a.calib} noise inputs)", out))
        for label, path in models:
            r = verify(path, a.data, fp_path=fp32, threads=a.threads, latency_runs=a.latency_runs)
            lat = r.latency_ms
            rows.append({"model": label, "fp32_top1": r.fp32.top1, "top1": r.quantized.top1,
                         "agreement": r.agreement_top1, "p50_ms": lat.quantized.p50,
                         "fp32_p50_ms": lat.fp32.p50, "integer_convs": f"{r.integer_ops.conv_integer}/"
                         f"{r.integer_ops.conv_total}", "saturation_risk_layers": len(r.saturation.layers or ()),
                         "n": r.n_images, "cpu": r.machine.model, "flags": list(r.machine.flags)})
    print(f"| model | top-1 (FP32 {rows[0]['fp32_top1']:.2f}) | agree % | p50 ms ({a.threads} thr; FP32) | "
          "integer convs | layers that can saturate on AVX2 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['top1']:.2f} | {r['agreement']:.2f} | {r['p50_ms']:.3f} ({r['fp32_p50_ms']:.3f}) "
              f"| {r['integer_convs']} | {r['saturation_risk_layers']} |")
    print(f"{rows[0]['n']} images; CPU {rows[0]['cpu']} ({' '.join(rows[0]['flags'])})")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
