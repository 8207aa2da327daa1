#!/usr/bin/env python3
"""Compare two runs of a bundle's verifier (host vs device): one line ending in ``agreement NN.NN%``.

    python3 deploy/compare_runs.py HOST.json HOST.npz DEVICE.json DEVICE.npz [--label TEXT]

The .npz files are ``verify.pyz --save-outputs`` outputs (``outputs`` float32, ``top1`` int64) on
the same images; the .json files the verifier's reports. Prints the quantized model's accuracy on
both, the largest output difference, the integer kernels onnxruntime runs on the device, and the
top-1 agreement image by image. numpy only. Exit status 2 when the runs cannot be compared.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

#: onnxruntime's integer kernel ops, as counted in the census line
INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
               "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "ConvInteger", "MatMulInteger")


def _top1(report: dict) -> float | None:
    q = report.get("quantized") or {}
    return q.get("top1")


def compare(host_json: str, host_npz: str, dev_json: str, dev_npz: str) -> dict:
    """Agreement and differences of two saved runs (see the module docstring)."""
    a, b = np.load(host_npz), np.load(dev_npz)
    if a["outputs"].shape != b["outputs"].shape:
        raise ValueError(f"the runs saw different outputs: {a['outputs'].shape} vs {b['outputs'].shape}")
    host, dev = json.load(open(host_json)), json.load(open(dev_json))
    census = (dev.get("integer_ops") or {}).get("optimized_op_counts") or {}
    ops = (dev.get("integer_ops") or {})
    return {"n": int(len(a["top1"])),
            "agreement": float(100.0 * np.mean(a["top1"] == b["top1"])),
            "max_abs_diff": float(np.abs(a["outputs"].astype(np.float64) - b["outputs"]).max()),
            "host_top1": _top1(host), "device_top1": _top1(dev),
            "device_cpu": (dev.get("machine") or {}).get("model"),
            "integer": {k: v for k, v in census.items() if k in INTEGER_OPS},
            "conv_integer": ops.get("conv_integer"), "conv_total": ops.get("conv_total")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("host_json")
    ap.add_argument("host_npz")
    ap.add_argument("device_json")
    ap.add_argument("device_npz")
    ap.add_argument("--label", default="")
    a = ap.parse_args(argv)
    try:
        r = compare(a.host_json, a.host_npz, a.device_json, a.device_npz)
    except (OSError, KeyError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    acc = ""
    if r["host_top1"] is not None and r["device_top1"] is not None:
        acc = f"top-1 host {r['host_top1']:.2f} / ARM {r['device_top1']:.2f}; "
    kernels = ", ".join(f"{k} {v}" for k, v in sorted(r["integer"].items()))
    print(f"{a.label}: {r['n']} images; {acc}max output diff {r['max_abs_diff']:.4g}; "
          f"integer convs {r['conv_integer']}/{r['conv_total']} ({kernels}); agreement {r['agreement']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
