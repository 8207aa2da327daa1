"""The typed reports: ``to_dict()`` is the documented JSON (keys, order, value types), ``from_dict()``
reads it back, keys only some reports have stay absent from the others (torch-free, no models)."""

from __future__ import annotations

import json

import pytest

from toolchain.compare import CompareRow, LatencyRow
from toolchain.reports import Artifacts, ParityLevel, ParityResult, QuantizeSection, Recipe, RunReport
from toolchain.verify.machine import SaturationRisk
from toolchain.verify.results import (Accuracy, IntegerOps, Latency, LatencyStats, MaskScores, Saturation,
                                      Segmentation, VerifyReport)

INT_OPS = {"conv_total": 2, "conv_integer": 1, "float_nodes": [{"name": "fc", "op_type": "Gemm"}],
           "optimized_op_counts": {"QLinearConv": 1, "Gemm": 1}, "inspected_level": "ORT_ENABLE_ALL",
           "method": "onnx"}
VERIFY = {
    "fp32": {"top1": 70.0, "top5": 90.0}, "quantized": {"top1": 60.0, "top5": 90.0}, "agreement_top1": 80.0,
    "top1_drop": 10.0, "top1_stderr": 15.49, "n_images": 10,
    "latency_ms": {"threads": 1, "batch_size": 1, "warmup": 2, "runs": 3, "fp32": None,
                   "quantized": {"p50": 0.1, "p90": 0.2, "mean": 0.15, "min": 0.09, "runs": 3}},
    "bytes": {"fp32": None, "quantized": 1000}, "integer_ops": INT_OPS, "ort_version": "1.0",
    "providers": ["CPUExecutionProvider"],
    "machine": {"model": "cpu", "arch": "x86_64", "flags": ["avx2"], "source": "/proc/cpuinfo",
                "int16_pair_saturation": True, "native_target": "portable", "int16_pair_saturation_probed": None},
    "saturation": {"layers": [{"node": "conv", "qmax_act": 255, "qmax_weight": 127, "bound": 64770}],
                   "exact_here": False},
    "warnings": ["w"],
    "meta": {"input_shape": [3, 8, 8], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_classes": 6,
             "resize": None, "arch": None, "source_sha256": "", "source_format": "", "task": "classification",
             "extra": {}},
    "files": {"quantized": "q.onnx", "fp32": None, "data": "d.npz"}, "data_fingerprint": "ab",
    "settings": {"threads": 1, "batch_size": 64, "latency_runs": 3, "warmup": 2, "limit": None},
    "notes": ["n"], "zqtool_version": "0.1.0", "wall_s": 1.5,
}


def test_verify_report_round_trip_keeps_keys_order_and_types():
    r = VerifyReport.from_dict(VERIFY)
    assert r.latency_ms.quantized == LatencyStats(p50=0.1, p90=0.2, mean=0.15, min=0.09, runs=3)
    assert r.latency_ms.fp32 is None and r.providers == ("CPUExecutionProvider",)
    assert r.saturation.layers == (SaturationRisk("conv", 255, 127, 64770),)
    assert r.integer_ops.float_nodes[0].op_type == "Gemm" and r.meta.num_classes == 6
    d = r.to_dict()
    assert d == VERIFY and list(d) == list(VERIFY) and json.dumps(d) == json.dumps(VERIFY)
    assert "segmentation" not in d and "fallback_reason" not in d["integer_ops"]


def test_optional_keys_appear_only_when_set():
    ops = IntegerOps.from_dict({**INT_OPS, "fallback_reason": "no layout"})
    assert ops.fallback_reason == "no layout" and list(ops.to_dict())[-1] == "fallback_reason"
    seg = Segmentation(num_classes=3, output_hw=(4, 4), pixels=48, pixel_agreement=None, miou_vs_fp32=None,
                       class_iou_vs_fp32=None, masks=False, ignore_index=255, labelled_pixels=None,
                       fp32=MaskScores(), quantized=MaskScores(), miou_drop=None)
    d = {**VERIFY, "segmentation": seg.to_dict()}
    assert d["segmentation"]["output_hw"] == [4, 4]
    r = VerifyReport.from_dict(d)
    assert r.segmentation == seg and r.to_dict() == d


def test_from_dict_missing_and_unknown_keys():
    older = {k: v for k, v in VERIFY.items() if k != "saturation"}  # a report from before the key
    with pytest.raises(ValueError, match="VerifyReport: the report has no 'saturation'"):
        VerifyReport.from_dict(older)
    assert Latency.from_dict({"threads": 1, "batch_size": 1, "warmup": 0, "runs": 0}).quantized is None
    assert Accuracy.from_dict({"top1": 1.0, "top5": 2.0, "top10": 3.0}) == Accuracy(1.0, 2.0)
    assert Saturation.from_dict({"exact_here": True}) == Saturation(layers=None, exact_here=True)
    with pytest.raises(ValueError, match="expected a JSON object"):
        VerifyReport.from_dict([1, 2])


def test_parity_result_keys_match_check_parity():
    empty = ParityResult(off=ParityLevel(n=0), on=ParityLevel(n=0)).to_dict()
    assert empty == {lv: {"agreement_top1": None, "max_abs_diff": None, "max_diff_lsb": None,
                          "mean_diff_lsb": None, "n": 0} for lv in ("off", "on")}
    full = dict(reference="exact", agreement_top1=100.0, identical=99.0, max_abs_diff=0.1, max_diff_lsb=1.0,
                mean_diff_lsb=0.1, lsb=0.1, n=4)
    diverged = ParityLevel(**full)  # not identical at a fused level: first_difference is written, None or not
    assert diverged.diverged and diverged.to_dict() == {**full, "first_difference": None}
    same = ParityLevel(**{**full, "identical": 100.0})
    assert "first_difference" not in same.to_dict()
    where = ParityLevel(**full, first_difference={"ort_op": "QLinearConv"})
    p = ParityResult(on=where)
    assert list(p.to_dict()) == ["on"] and ParityResult.from_dict(p.to_dict()) == p
    assert p.levels() == {"on": where}


def _run_report() -> RunReport:
    q = QuantizeSection(method="minmax", budget="cpu", recipe=Recipe(file="minmax.toml", budget="cpu"), cached=False,
                        scheme={"wbits": 8, "abits": 8, "first_last_bits": 8, "target": "portable"}, seed=0,
                        wall_s=0.5, method_s=0.5, reused={}, device="cpu", float_ops={}, unknown_ops={})
    return RunReport(verify=VerifyReport.from_dict(VERIFY), quantize=q, parity=None,
                     artifacts=Artifacts(fp="fp", q="q", onnx="o", qdq="o/m.qdq.onnx", fp32="o/m.fp32.onnx"))


def test_run_report_is_the_verify_report_plus_three_sections():
    r = _run_report()
    d = r.to_dict()
    assert list(d) == list(VERIFY) + ["quantize", "parity", "artifacts"] and d["parity"] is None
    assert d["quantize"]["recipe"] == {"file": "minmax.toml", "budget": "cpu"}
    assert RunReport.from_dict(json.loads(json.dumps(d))) == r
    with pytest.raises(ValueError, match="not a run report"):
        RunReport.from_dict(VERIFY)


def test_compare_row_from_reports_and_its_json():
    from toolchain.compare import row_from_reports
    r = _run_report()
    row = row_from_reports([r], model="m")
    assert row.ok and row.top1 == 60.0 and row.top1_drop == 10.0 and row.conv_integer == 1
    assert row.latency == (LatencyRow(threads=1, fp32_p50_ms=None, qdq_p50_ms=0.1, ratio=None, runs=3),)
    d = row.to_dict()
    assert d["latency"] == [{"threads": 1, "fp32_p50_ms": None, "qdq_p50_ms": 0.1, "ratio": None, "runs": 3}]
    assert d["artifacts"]["qdq"] == "o/m.qdq.onnx" and "error_type" not in d and "pair_wall_s" not in d
    assert CompareRow.from_dict(d) == row
    failed = CompareRow(model="m", method="minmax", wbits=4, abits=4, first_last_bits=8, status="failed",
                        error="boom", error_type="ZqError", pair_wall_s=1.0)
    assert failed.to_dict() == {"model": "m", "method": "minmax", "wbits": 4, "abits": 4, "first_last_bits": 8,
                                "status": "failed", "error": "boom", "error_type": "ZqError", "pair_wall_s": 1.0}
