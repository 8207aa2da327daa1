"""`zqtool bundle`: the device folder, its torch-free verifier (verify.pyz), and the ARM check script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import tiny_npz, tiny_state_dict_file
from toolchain.artifacts import Store
from toolchain.cli import app
from toolchain.core.keys import file_sha256
from toolchain.pipeline import export_stage, load_stage, quantize_stage
from toolchain.quant.scheme import QuantScheme

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    store = Store(tmp / "runs")
    fp = load_stage(tiny_state_dict_file(tmp), arch="tinynet", store=store)
    q = quantize_stage(fp, method="minmax", scheme=QuantScheme.from_bits(8, target="arm64"), store=store)
    return q, export_stage(q, store=store), tiny_npz(tmp)


def _pyz(bundle: Path, *args) -> subprocess.CompletedProcess:
    """Run the bundle's verifier with this Python, from outside the repo (no toolchain on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(bundle / "verify.pyz"), *map(str, args)], cwd=bundle,
                          capture_output=True, text=True, env=env)


def test_bundle_holds_models_verifier_data_and_manifest(exported, tmp_path):
    q, onnx, data = exported
    out = tmp_path / "b"
    res = runner.invoke(app, ["bundle", str(q.dir), "--out", str(out), "--data", str(data), "--target", "arm64"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.txt", "bundle.json", "model.fp32.onnx", "model.qdq.onnx", "test.npz", "verify.pyz"]
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["target"] == "arm64"
    assert manifest["files"]["model.qdq.onnx"]["sha256"] == file_sha256(onnx.qdq_path)
    assert "python3 verify.pyz model.qdq.onnx --data test.npz" in (out / "README.txt").read_text()
    import zipfile
    members = zipfile.ZipFile(out / "verify.pyz").namelist()
    assert "__main__.py" in members and "toolchain/verify/runner.py" in members
    assert "toolchain/core/meta.py" in members and "toolchain/core/errors.py" in members
    assert not any(m.startswith(("toolchain/quant/", "toolchain/methods/", "toolchain/export/",
                                 "toolchain/models/", "toolchain/graph/")) for m in members)
    assert "toolchain/errors.py" not in members  # the device imports the errors from the core


def test_bundled_verifier_runs_without_the_repo_and_saves_outputs(exported, tmp_path):
    q, onnx, data = exported
    out = tmp_path / "b"
    assert runner.invoke(app, ["bundle", str(onnx.dir), "--out", str(out), "--data", str(data)]).exit_code == 0
    res = _pyz(out, "model.qdq.onnx", "--data", "test.npz", "--runs", "2", "--json", "r.json",
               "--save-outputs", "o.npz")
    assert res.returncode == 0, res.stderr
    assert "quantized" in res.stdout and "CPU:" in res.stdout
    report = json.loads((out / "r.json").read_text())
    saved = np.load(out / "o.npz")
    assert saved["outputs"].shape == (report["n_images"], 10)
    assert (saved["top1"] == saved["outputs"].argmax(1)).all()
    # the comparison script on two runs of the same bundle: identical outputs
    res2 = _pyz(out, "model.qdq.onnx", "--data", "test.npz", "--runs", "0", "--json", "r2.json",
                "--save-outputs", "o2.npz")
    assert res2.returncode == 0, res2.stderr
    cmp = subprocess.run([sys.executable, str(ROOT / "deploy" / "compare_runs.py"), "r.json", "o.npz", "r2.json",
                          "o2.npz", "--label", "tiny"], cwd=out, capture_output=True, text=True)
    assert cmp.returncode == 0 and cmp.stdout.strip().endswith("agreement 100.00%"), cmp.stdout + cmp.stderr
    assert "max output diff 0" in cmp.stdout


def test_bundled_verifier_can_skip_the_fp32_reference(exported, tmp_path):
    q, onnx, data = exported
    out = tmp_path / "b"
    assert runner.invoke(app, ["bundle", str(onnx.dir), "--out", str(out), "--data", str(data)]).exit_code == 0
    res = _pyz(out, "model.qdq.onnx", "--data", "test.npz", "--runs", "0", "--fp", "none", "--json", "r.json")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "r.json").read_text())
    assert report["fp32"]["top1"] is None and report["quantized"]["top1"] is not None
    assert any("FP32 reference skipped" in n for n in report["notes"])


def test_bundled_verifier_errors_are_one_line(exported, tmp_path):
    q, onnx, data = exported
    out = tmp_path / "b"
    assert runner.invoke(app, ["bundle", str(onnx.qdq_path), "--out", str(out)]).exit_code == 0
    res = _pyz(out, "model.qdq.onnx", "--data", "missing.npz")
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_bundle_refuses_another_target_and_a_non_empty_folder(exported, tmp_path):
    q, onnx, data = exported
    res = runner.invoke(app, ["bundle", str(onnx.dir), "--out", str(tmp_path / "x"), "--target", "x86-vnni"])
    assert res.exit_code != 0 and "quantized for --target arm64" in res.output
    assert not (tmp_path / "x").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["bundle", str(onnx.dir), "--out", str(busy)])
    assert res.exit_code != 0 and "not empty" in res.output
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]


def test_bundle_with_ort_format_model_verifies(exported, tmp_path):
    q, onnx, data = exported
    out = tmp_path / "b"
    res = runner.invoke(app, ["bundle", str(onnx.dir), "--out", str(out), "--data", str(data), "--ort"])
    assert res.exit_code == 0, res.output
    assert (out / "model.qdq.ort").is_file()
    res = _pyz(out, "model.qdq.ort", "--data", "test.npz", "--runs", "0")
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ZQTOOL_ARM64") != "1", reason="set ZQTOOL_ARM64=1 (root, debootstrap, "
                    "qemu-user-static, network for the first run) to run the bundle on an emulated aarch64 CPU")
def test_bundle_on_emulated_arm64(exported, tmp_path):
    q, onnx, data = exported
    out = tmp_path / "b"
    assert runner.invoke(app, ["bundle", str(onnx.dir), "--out", str(out), "--data", str(data), "--ort"]).exit_code == 0
    res = subprocess.run(["bash", str(ROOT / "deploy" / "check_arm64.sh"), str(out)], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable, "ZQTOOL_ARM64_CPUS": "cortex-a72"})
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if "agreement" in ln]
    assert len(lines) == 2 and all(ln.endswith("agreement 100.00%") for ln in lines), res.stdout


def test_bundle_and_arm_check_refuse_what_is_not_theirs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["bundle", str(empty), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "neither a .qdq.onnx file" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["bundle", str(tmp_path / "missing.qdq.onnx"), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "does not exist" in res.output
    assert not (tmp_path / "b").exists()
    res = subprocess.run(["bash", str(ROOT / "deploy" / "check_arm64.sh"), str(empty)], capture_output=True, text=True)
    assert res.returncode == 2 and "is not a bundle" in res.stderr
