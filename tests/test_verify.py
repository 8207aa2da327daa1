"""Stage 4 verifier (toolchain.verify) on tiny hand-built ONNX classifiers, and its torch-free guarantee.

The float model is Conv(3→4, 3x3) → Relu → GlobalAveragePool → Flatten → Gemm(4→6) whose
logits are known functions of the per-channel means m_c of the (solid-colour) input:
logits = (m_p(0), m_p(1), m_p(2), -1, -2, -3) (+ small biases) for a permutation p, so its
top-1 is the image's dominant channel (mapped through p) and class 5 is never in its top-5.
The QDQ model is the same network with uint8 activations (zero-point 0), int8 per-channel
weights (DequantizeLinear axis=0) and int32 biases at scale s_in*s_w, which onnxruntime
fuses into QLinearConv / QLinearGlobalAveragePool / QGemm.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.data import NpzEvalSet
from toolchain.core.errors import ConfigError, DataError, InputFileError
from toolchain.verify import VerifyReport, inspect_integer_ops, render_report, report_text, verify
from toolchain.verify.results import Accuracy, Sizes
from toolchain.verify.model_card import model_meta_module
from toolchain.verify.session import Classifier

ROOT = Path(__file__).resolve().parents[1]
ModelMeta = model_meta_module().ModelMeta
META = ModelMeta((3, 8, 8), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 6)

N_IMAGES = 10
DOMINANT = [i % 3 for i in range(N_IMAGES)]  # brightest channel of image i
LABELS = [0, 1, 2, 1, 1, 5, 0, 3, 2, 0]
IDENTITY, SWAP12 = (0, 1, 2), (0, 2, 1)


# ----------------------------------------------------------------------------- builders

def _weights(perm):
    w = np.zeros((4, 3, 3, 3), np.float32)
    for k in range(3):
        w[k, k, 1, 1] = 1.0
    w[3, :, 1, 1] = 1 / 3
    b = np.array([0.01, 0.02, 0.03, 0.0], np.float32)
    fc_w = np.zeros((6, 4), np.float32)
    for k in range(3):
        fc_w[k, perm[k]] = 1.0
    fc_b = np.array([0, 0, 0, -1, -2, -3], np.float32)
    return w, b, fc_w, fc_b


def _model(nodes, inits, batch, name):
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 6])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def float_model(perm=IDENTITY, batch="N"):
    w, b, fc_w, fc_b = _weights(perm)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc_w, "fc_w"), (fc_b, "fc_b"))]
    return _model(nodes, inits, batch, "float")


def qdq_model(perm=IDENTITY):
    w, b, fc_w, fc_b = _weights(perm)
    s_in = s_act = np.float32(1 / 255)
    s_w = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    s_fc = (np.abs(fc_w).max(1) / 127).astype(np.float32)
    s_fc[s_fc == 0] = 1 / 127
    s_out, zp_out = np.float32(4 / 255), np.uint8(191)  # logits in about [-3, 1]
    arrays = {
        "w_q": np.round(w / s_w[:, None, None, None]).astype(np.int8), "w_s": s_w, "w_z": np.zeros(4, np.int8),
        "b_q": np.round(b / (s_in * s_w)).astype(np.int32), "b_s": (s_in * s_w).astype(np.float32),
        "b_z": np.zeros(4, np.int32),
        "fc_w_q": np.round(fc_w / s_fc[:, None]).astype(np.int8), "fc_w_s": s_fc, "fc_w_z": np.zeros(6, np.int8),
        "fc_b_q": np.round(fc_b / (s_act * s_fc)).astype(np.int32), "fc_b_s": (s_act * s_fc).astype(np.float32),
        "fc_b_z": np.zeros(6, np.int32),
        "s_in": np.array(s_in), "s_act": np.array(s_act), "zp0": np.array(0, np.uint8),
        "s_out": np.array(s_out), "zp_out": np.array(zp_out),
    }
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]

    def qdq(x, s, z, out):
        return [helper.make_node("QuantizeLinear", [x, s, z], [out + "_q"]),
                helper.make_node("DequantizeLinear", [out + "_q", s, z], [out])]

    def dq(q, s, z, out, axis=0):
        return helper.make_node("DequantizeLinear", [q, s, z], [out], axis=axis)

    nodes = [
        *qdq("input", "s_in", "zp0", "x"),
        dq("w_q", "w_s", "w_z", "w"), dq("b_q", "b_s", "b_z", "b"),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        *qdq("r", "s_act", "zp0", "r_dq"),
        helper.make_node("GlobalAveragePool", ["r_dq"], ["g"], name="gap"),
        *qdq("g", "s_act", "zp0", "g_dq"),
        helper.make_node("Flatten", ["g_dq"], ["f"], name="flatten"),
        *qdq("f", "s_act", "zp0", "f_dq"),
        dq("fc_w_q", "fc_w_s", "fc_w_z", "fc_w"), dq("fc_b_q", "fc_b_s", "fc_b_z", "fc_b"),
        helper.make_node("Gemm", ["f_dq", "fc_w", "fc_b"], ["o"], transB=1, name="fc"),
        *qdq("o", "s_out", "zp_out", "logits"),
    ]
    return _model(nodes, inits, "N", "qdq")


def save(model, path, meta=META):
    if meta is not None:
        helper.set_model_props(model, meta.to_onnx_props())
    onnx.save(model, path)
    return path


def solid_images():
    imgs = np.full((N_IMAGES, 8, 8, 3), 50, np.uint8)
    for i, c in enumerate(DOMINANT):
        imgs[i, :, :, c] = 200
    return imgs


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "test.npz"
    np.savez(p, images=solid_images(), labels=np.array(LABELS))
    return p


@pytest.fixture
def models(tmp_path):
    d = tmp_path / "onnx"
    d.mkdir()
    return {
        "fp": save(float_model(IDENTITY), d / "model.fp32.onnx"),
        "qdq": save(qdq_model(IDENTITY), d / "model.qdq.onnx"),
        "swap": save(float_model(SWAP12), tmp_path / "swap.onnx"),
    }


def expected_top1(perm):
    pred = [perm.index(c) for c in DOMINANT]  # class k reads channel perm[k]
    return 100.0 * sum(p == y for p, y in zip(pred, LABELS)) / N_IMAGES


REQUIRED_KEYS = [
    "fp32.top1", "fp32.top5", "quantized.top1", "quantized.top5", "agreement_top1", "n_images",
    "latency_ms.fp32.p50", "latency_ms.fp32.p90", "latency_ms.quantized.p50", "latency_ms.quantized.p90",
    "latency_ms.threads", "bytes.fp32", "bytes.quantized", "integer_ops.conv_total",
    "integer_ops.conv_integer", "integer_ops.float_nodes", "integer_ops.optimized_op_counts",
    "top1_stderr", "ort_version", "providers", "files.quantized", "files.fp32", "files.data",
]


def lookup(d, dotted):
    for part in dotted.split("."):
        assert isinstance(d, dict) and part in d, f"missing key {dotted}"
        d = d[part]
    return d


# ---------------------------------------------------------------------------- accuracy

def test_hand_computed_accuracy_and_agreement(models, data):
    # "quantized" slot: the 1<->2 swapped classifier; reference: the identity one
    r = verify(models["swap"], data, fp_path=models["fp"], latency_runs=3, warmup=1)
    assert expected_top1(IDENTITY) == 70.0 and expected_top1(SWAP12) == 30.0
    assert r.n_images == 10
    assert r.fp32 == Accuracy(top1=70.0, top5=90.0)  # label 5 (image 5) is never in the top-5
    assert r.quantized == Accuracy(top1=30.0, top5=90.0)
    assert r.agreement_top1 == 40.0  # same class only where channel 0 dominates: images 0, 3, 6, 9
    assert r.top1_drop == pytest.approx(40.0)
    assert r.top1_stderr == pytest.approx(100 * math.sqrt(0.3 * 0.7 / 10))


def test_qdq_model_fuses_to_integer_kernels_and_agrees(models, data):
    r = verify(models["qdq"], data, latency_runs=5, warmup=1)  # finds model.fp32.onnx beside it
    assert r.files.fp32 == str(models["fp"])
    assert r.quantized == Accuracy(top1=70.0, top5=90.0)
    assert r.fp32 == Accuracy(top1=70.0, top5=90.0)
    assert r.agreement_top1 == 100.0
    ops = r.integer_ops
    assert ops.conv_total == 2 and ops.conv_integer == 2, ops
    assert ops.float_nodes == ()
    assert ops.optimized_op_counts.get("QLinearConv") == 1 and ops.optimized_op_counts.get("QGemm") == 1
    assert ops.inspected_level == "ORT_ENABLE_ALL" and ops.method == "onnx" and ops.fallback_reason is None
    assert r.bytes == Sizes(fp32=models["fp"].stat().st_size, quantized=models["qdq"].stat().st_size)


def test_float_model_has_no_integer_kernels(models):
    for method in ("onnx", "profile"):
        ops = inspect_integer_ops(models["fp"], method=method)
        assert ops["conv_total"] == 2 and ops["conv_integer"] == 0
        assert {d["op_type"] for d in ops["float_nodes"]} >= {"Gemm"}
        assert len(ops["float_nodes"]) >= 2  # the conv (fused/NCHWc form) and the Gemm


def test_profile_route_matches_onnx_route(models):
    a = inspect_integer_ops(models["qdq"], method="onnx")
    b = inspect_integer_ops(models["qdq"], method="profile")
    assert b["method"] == "profile"
    for k in ("conv_total", "conv_integer", "float_nodes", "optimized_op_counts"):
        assert a[k] == b[k], k


def test_inspection_falls_back_to_extended(models, data, monkeypatch):
    real = ort.InferenceSession

    def refuse_layout_save(path, so=None, *args, **kwargs):
        if (so is not None and so.optimized_model_filepath
                and so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
            raise RuntimeError("cannot serialize layout-transformed graph")
        return real(path, so, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", refuse_layout_save)
    ops = inspect_integer_ops(models["qdq"])
    assert ops["inspected_level"] == "ORT_ENABLE_EXTENDED" and ops["conv_integer"] == 2
    assert "layout-transformed" in ops["fallback_reason"]
    r = verify(models["qdq"], data, latency_runs=0)
    assert any("ORT_ENABLE_EXTENDED" in n for n in r.notes)
    assert r.integer_ops.fallback_reason == ops["fallback_reason"]
    assert r.to_dict()["integer_ops"] == ops  # the key only reports that fell back have


def test_report_keys_json_and_units(models, data, tmp_path):
    report = verify(models["qdq"], data, fp_path=models["fp"], threads=2, latency_runs=7, warmup=2)
    r = report.to_dict()
    assert "fallback_reason" not in r["integer_ops"] and "segmentation" not in r
    assert VerifyReport.from_dict(json.loads(json.dumps(r))) == report  # report.json reads back
    assert VerifyReport.from_dict(r).to_dict() == r
    for key in REQUIRED_KEYS:
        lookup(r, key)
    json.loads(json.dumps(r))  # plain JSON types only
    for key in ("fp32.top1", "fp32.top5", "quantized.top1", "quantized.top5", "agreement_top1"):
        v = lookup(r, key)
        assert isinstance(v, float) and 0.0 <= v <= 100.0
    lat = r["latency_ms"]
    assert lat["threads"] == 2 and lat["runs"] == 7 and lat["batch_size"] == 1
    for m in ("fp32", "quantized"):
        assert 0 < lat[m]["p50"] <= lat[m]["p90"] and lat[m]["runs"] == 7
    assert r["providers"] == ["CPUExecutionProvider"] and r["ort_version"] == ort.__version__
    assert r["meta"]["num_classes"] == 6 and len(r["data_fingerprint"]) == 64


def test_without_fp32_reference(tmp_path, data):
    q = save(qdq_model(), tmp_path / "alone.qdq.onnx")
    r = verify(q, data, latency_runs=2, warmup=0)
    assert r.fp32 == Accuracy(top1=None, top5=None)
    assert r.agreement_top1 is None and r.top1_drop is None
    assert r.latency_ms.fp32 is None and r.bytes.fp32 is None and r.files.fp32 is None
    assert any("agreement not computed" in n for n in r.notes)
    assert r.to_dict()["fp32"] == {"top1": None, "top5": None}
    text = report_text(r)
    assert "FP32" in text and "—" in text and "agreement not computed" in text


def test_static_batch_one_and_batching_options(tmp_path, models, data):
    one = save(float_model(SWAP12, batch=1), tmp_path / "static1.onnx")
    r = verify(one, data, fp_path=models["fp"], batch_size=4, latency_runs=2, warmup=0)
    assert r.quantized.top1 == 30.0 and r.agreement_top1 == 40.0
    assert any("static batch of 1" in n for n in r.notes)
    r = verify(models["swap"], data, fp_path=models["fp"], batch_size=3, latency_runs=0)
    assert r.quantized.top1 == 30.0 and r.latency_ms.quantized is None


def test_limit_eval_set_object_and_progress(models, data):
    calls = []
    r = verify(models["swap"], NpzEvalSet(data), fp_path=models["fp"], limit=4, batch_size=3,
               latency_runs=5, warmup=2, progress=lambda a, t, d: calls.append((a, t, d)))
    assert r.n_images == 4
    assert r.quantized.top1 == 25.0  # images 0..3: swapped preds 0,2,1,0 vs labels 0,1,2,1
    assert r.fp32.top1 == 75.0 and r.agreement_top1 == 50.0
    by_desc = {}
    for a, t, d in calls:
        by_desc.setdefault(d, []).append((a, t))
    assert by_desc["accuracy"][0] == (0, 4) and sum(a for a, _ in by_desc["accuracy"]) == 4
    for d in ("latency quantized", "latency fp32"):
        assert sum(a for a, _ in by_desc[d]) == 7 and by_desc[d][0] == (0, 7)
    assert sum(a for a, _ in by_desc["integer ops"]) == 1


# ------------------------------------------------------------------------------ errors

def test_model_errors(tmp_path, models, data):
    no_card = save(float_model(), tmp_path / "nocard.onnx", meta=None)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(models["fp"].read_bytes()[:100])
    wrong_classes = save(float_model(), tmp_path / "k7.onnx", ModelMeta((3, 8, 8), (0,), (1,), 7))
    wrong_shape = save(float_model(), tmp_path / "s16.onnx", ModelMeta((3, 16, 16), (0,), (1,), 6))
    other_card = save(float_model(), tmp_path / "other.onnx", ModelMeta((3, 8, 8), (0.5,), (1,), 6))
    cases = [
        ((tmp_path / "missing.onnx", data), {}, "not found"),
        ((no_card, data), {}, "carries no zqtool model card"),
        ((corrupt, data), {}, "onnxruntime cannot load"),
        ((wrong_classes, data), {}, "but the model card says 7 classes"),
        ((wrong_shape, data), {}, "model card says (C, H, W) = (3, 16, 16)"),
        ((models["qdq"], data), {"fp_path": tmp_path / "nope.onnx"}, "FP32 reference model not found"),
        ((models["qdq"], data), {"fp_path": other_card}, "disagree on mean"),
    ]
    for args, kwargs, words in cases:
        with pytest.raises(InputFileError) as e:
            verify(*args, **kwargs)
        assert words in e.value.message, words
        assert "\n" not in e.value.message
    with pytest.raises(InputFileError, match="carries no zqtool model card") as e:
        verify(no_card, data)
    assert "zqtool export" in e.value.hint
    clf = Classifier(models["fp"], threads=1)  # output checked at run time too (dynamic dims)
    clf.num_classes = 7
    with pytest.raises(InputFileError, match=r"has shape \(2, 6\) for a batch of 2, expected \(2, 7\)"):
        clf.logits(np.zeros((2, 3, 8, 8), np.float32))


def test_data_and_option_errors(tmp_path, models):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=solid_images(), labels=np.array([9] * N_IMAGES))
    with pytest.raises(DataError, match="outside \\[0, 6\\)"):
        verify(models["qdq"], bad, latency_runs=0)
    with pytest.raises(DataError, match="not found"):
        verify(models["qdq"], tmp_path / "none.npz")
    gray = tmp_path / "gray.npz"
    np.savez(gray, images=solid_images()[..., 0], labels=np.array(LABELS))
    with pytest.raises(DataError, match="1 channel"):
        verify(models["qdq"], gray)
    good = tmp_path / "ok.npz"
    np.savez(good, images=solid_images(), labels=np.array(LABELS))
    for kwargs in ({"threads": -1}, {"batch_size": 0}, {"latency_runs": -1}, {"warmup": 1.5}, {"limit": 0}):
        with pytest.raises(ConfigError):
            verify(models["qdq"], good, **kwargs)
    with pytest.raises(ConfigError, match="path or an EvalSet"):
        verify(models["qdq"], 42)


# ------------------------------------------------------------------------------ report

def test_render_report(models, data):
    from rich.console import Console

    r = verify(models["qdq"], data, latency_runs=3, warmup=0)
    console = Console(record=True, width=140)
    console.print(render_report(r))
    out = console.export_text()
    for words in ("FP32", "quantized", "top-1", "2/2", "100.00", "70.00", "p50"):
        assert words in out, words
    text = report_text(r)
    assert text.splitlines()[0].startswith("model") and "2/2" in text


# ------------------------------------------------------------------ torch-free guarantee

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{{name}} is blocked in this test", name=name)
            return None
    sys.meta_path.insert(0, _Blocker())
    try:
        import torch
        raise SystemExit("the import blocker does not work")
    except ImportError:
        pass
""")


def _run_python(code, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_verify_runs_without_torch_onnx_or_rich(models, data):
    code = BLOCKER.format(blocked={"torch", "torchvision", "onnx", "rich", "typer"}) + textwrap.dedent(f"""
        import json
        import toolchain.data, toolchain.verify
        from toolchain.verify import verify, render_report
        r = verify({str(models["qdq"])!r}, {str(data)!r}, latency_runs=3, warmup=1)
        print(json.dumps({{"report": r.to_dict(), "modules": sorted(m for m in ("torch", "onnx", "rich", "typer")
                                                     if m in sys.modules),
                          "render_is_text": isinstance(render_report(r), str),
                          "toolchain": toolchain.__file__}}))
    """)
    proc = _run_python(code, ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    assert Path(out["toolchain"]).resolve().parent == ROOT / "toolchain"
    r = out["report"]
    assert r["quantized"]["top1"] == 70.0 and r["agreement_top1"] == 100.0
    assert r["integer_ops"]["method"] == "profile" and r["integer_ops"]["conv_integer"] == 2
    assert out["render_is_text"]


def test_device_runner_with_only_the_needed_files(tmp_path, models, data):
    dev = tmp_path / "device"
    files = ["toolchain/__init__.py", "toolchain/targets.py"]
    files += [str(p.relative_to(ROOT)) for d in ("core", "data", "verify")
              for p in (ROOT / "toolchain" / d).glob("*.py")]
    for f in files:
        (dev / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, dev / f)
    shutil.copy(ROOT / "deploy" / "verify_runner.py", dev)
    report = tmp_path / "report.json"

    def run(*argv):
        code = BLOCKER.format(blocked={"torch", "onnx", "rich", "typer"}) + textwrap.dedent(f"""
            import runpy
            sys.argv = ["verify_runner.py", *{list(map(str, argv))!r}]
            try:
                runpy.run_path("verify_runner.py", run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code
            print("TOOLCHAIN", sys.modules["toolchain"].__file__, "TORCH", "torch" in sys.modules)
            sys.exit(code)
        """)
        return _run_python(code, dev)

    proc = run(models["qdq"], "--data", data, "--fp", models["fp"], "--threads", "1",
               "--json", report, "--limit", "6", "--runs", "3", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"TOOLCHAIN {dev / 'toolchain' / '__init__.py'} TORCH False" in proc.stdout
    assert "quantized" in proc.stdout and "2/2" in proc.stdout
    r = json.loads(report.read_text())
    assert r["n_images"] == 6 and r["agreement_top1"] == 100.0
    proc = run(models["qdq"], "--data", tmp_path / "missing.npz")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: eval data not found") and proc.stderr.count("\n") == 1


def test_zero_threads_means_onnxruntime_default_everywhere():
    from toolchain.compare import parse_threads
    from toolchain.verify.report import threads_text
    assert parse_threads("0,1") == [0, 1]
    assert threads_text(0) == "onnxruntime's default threads (all cores)"
    assert threads_text(1) == "1 thread" and threads_text(4) == "4 threads"
    with pytest.raises(ConfigError):
        parse_threads("-1")
