"""The zqtool command line: each stage, and every user error as one line with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolchain.cli import app

from helpers import tiny_npz, tiny_state_dict_file

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    return tiny_state_dict_file(tmp_path), tiny_npz(tmp_path)


def test_stages_one_by_one(files, tmp_path):
    model, data = files
    out = tmp_path / "runs"
    r = invoke("quantize", model, "--arch", "tinynet", "--method", "minmax", "--bits", "4", "--out", out)
    assert r.exit_code == 0, r.output
    qdir = r.stdout.strip().splitlines()[-1]
    r = invoke("export", qdir, "--out", out)
    assert r.exit_code == 0, r.output
    qdq = r.stdout.strip().splitlines()[-1]
    assert qdq.endswith("model.qdq.onnx")
    report = tmp_path / "r.json"
    r = invoke("verify", qdq, "--data", data, "--latency-runs", "2", "--json", report)
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["n_images"] == 40 and rep["integer_ops"]["conv_integer"] == rep["integer_ops"]["conv_total"]
    assert rep["fp32"]["top1"] is not None
    # --fp none skips the FP32 reference (as the device verifier's flag does), not "file 'none' not found"
    r = invoke("verify", qdq, "--data", data, "--latency-runs", "0", "--fp", "none", "--json", report)
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["fp32"]["top1"] is None and rep["agreement_top1"] is None


def test_run_writes_json_with_parity(files, tmp_path):
    model, data = files
    report = tmp_path / "r.json"
    r = invoke("run", model, "--arch", "tinynet", "--data", data, "--method", "minmax", "--latency-runs", "2",
               "--parity-images", "8", "--json", report, "--out", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    for key in ("fp32", "quantized", "agreement_top1", "latency_ms", "bytes", "integer_ops", "parity", "quantize"):
        assert key in rep
    assert "parity torch vs onnxruntime" in r.output


@pytest.mark.parametrize("args,message", [
    (["load", "{tmp}/missing.pt"], "does not exist"),
    (["load", "{model}"], "--arch"),
    (["load", "{model}", "--arch", "resnet20"], "missing"),
    (["load", "{model}", "--arch", "resnet20"], "92 missing [layer1.0.conv1.weight"),  # the keys themselves, not only counts
    (["load", "{model}", "--arch", "tinynet", "--input-shape", "1,8"], "C,H,W"),
    (["load", "{model}", "--arch", "tinynet", "--mean", "a,b"], "comma-separated numbers"),
    (["quantize", "{model}", "--arch", "tinynet", "--bits", "9"], "--bits must be an integer in 2..8, got 9"),
    (["quantize", "{model}", "--arch", "tinynet", "--bits", "9"], "--bits 8, 6, 4, 3 or 2"),
    (["quantize", "{model}", "--arch", "tinynet", "--residual-bits", "1"], "--residual-bits must be an integer in 2..8, got 1"),
    (["quantize", "{model}", "--arch", "tinynet", "--bits", "4", "--residual-bits", "8", "--scheme", "paper"],
     "--residual-bits needs the deploy scheme"),
    (["quantize", "{model}", "--arch", "tinynet", "--method", "nope"], "'nope' is not one of 'bnstat', 'gznq'"),
    (["quantize", "{model}", "--arch", "tinynet", "--budget", "huge"], "'huge' is not one of 'cpu', 'paper'"),
    (["quantize", "{model}", "--arch", "tinynet", "--target", "avx9"], "'avx9' is not one of 'portable'"),
    (["quantize", "{model}", "--arch", "tinynet", "--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    (["quantize", "{model}", "--arch", "tinynet", "--method", "minmax", "--set", "num_std"], "key=value"),
    (["quantize", "{model}", "--arch", "tinynet", "--method", "minmax", "--set", "bogus=1"], "unknown setting"),
    (["quantize", "{model}", "--arch", "tinynet", "--time-budget", "soon"], "time budget must look like 15m"),
    (["export", "{tmp}"], "not a quantize run directory"),
    (["verify", "{tmp}/none.onnx", "--data", "{data}"], "none.onnx"),
    (["verify", "{model}", "--data", "{tmp}/none.npz"], ""),
])
def test_user_errors_are_one_clear_line(files, tmp_path, args, message):
    model, data = files
    args = [a.format(tmp=tmp_path, model=model, data=data) for a in args]
    r = invoke(*args, *([] if args[0] in ("verify",) else ["--out", tmp_path / "runs"]))
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert "error:" in r.output.lower() and message in r.output  # ours ("error: …") or click's ("Error: …")
    assert not (tmp_path / "runs" / "q").exists() or not any((tmp_path / "runs" / "q").iterdir())


def test_list_shows_archs_and_methods():
    r = invoke("list")
    assert r.exit_code == 0
    assert "resnet20" in r.output and "mobilenet_v2" in r.output and "bnstat" in r.output


def test_method_needing_bn_statistics_on_a_model_without_bn(tmp_path):
    import torch
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(144, 10)).eval()
    ep = torch.export.export(m, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "nobn.pt2"
    torch.export.save(ep, str(path))
    out = tmp_path / "runs"
    r = invoke("quantize", path, "--method", "bnstat", "--mean", "0.5", "--std", "0.5", "--out", out)
    assert r.exit_code == 2 and "needs BatchNorm statistics" in r.output and "Traceback" not in r.output
    assert not (out / "q").exists() or not any((out / "q").iterdir())
    # minmax needs no BN: moments are propagated through the weights
    r = invoke("quantize", path, "--method", "minmax", "--mean", "0.5", "--std", "0.5", "--out", out)
    assert r.exit_code == 0, r.output


def test_unexpected_failure_is_one_line_not_a_traceback(files, tmp_path, monkeypatch):
    import toolchain.pipeline as pipeline

    def broken(*a, **k):
        raise RuntimeError("something deep broke\nwith details")
    monkeypatch.setattr(pipeline, "load_stage", broken)
    r = invoke("load", files[0], "--arch", "tinynet", "--out", tmp_path / "runs")
    assert r.exit_code == 1
    assert "internal error (RuntimeError: something deep broke)" in r.output and "Traceback" not in r.output


def test_cli_choices_are_the_stages_own():
    from toolchain import cli
    from toolchain.methods.recipes import BUDGETS
    from toolchain.pipeline import EXPORT_FORMATS
    from toolchain.targets import TARGETS
    assert tuple(c.value for c in cli.BudgetChoice) == BUDGETS
    assert tuple(c.value for c in cli.FormatChoice) == EXPORT_FORMATS
    assert [c.value for c in cli.TargetChoice] == list(TARGETS)
    from toolchain.methods.registry import list_methods
    assert [c.value for c in cli.MethodChoice] == sorted(list_methods())


def test_export_refuses_another_target(files, tmp_path):
    model, _ = files
    r = invoke("quantize", model, "--arch", "tinynet", "--method", "minmax", "--out", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    qdir = r.output.strip().splitlines()[-1]
    r = invoke("export", qdir, "--target", "x86-vnni", "--out", tmp_path / "runs")
    assert r.exit_code == 2 and "quantized for --target portable, not x86-vnni" in r.output
    assert "target portable" in invoke("quantize", model, "--arch", "tinynet", "--method", "minmax",
                                       "--out", tmp_path / "runs").output


def test_a_cached_rerun_says_so(files, tmp_path):
    model, data = files
    args = ("run", model, "--arch", "tinynet", "--data", data, "--method", "minmax", "--latency-runs", "2",
            "--parity-images", "4", "--out", tmp_path / "runs")
    first = invoke(*args)
    assert first.exit_code == 0 and "(cached)" not in first.output.split("✓ quantize")[1].splitlines()[0]
    assert "quantize wall time" in first.output
    again = invoke(*args)
    assert again.exit_code == 0
    assert "(cached)" in again.output.split("✓ quantize")[1].splitlines()[0]
    assert "cached: built earlier in" in again.output and "quantize wall time" not in again.output


def test_export_defaults_to_the_runs_own_store(files, tmp_path, monkeypatch):
    model, _ = files
    store = tmp_path / "elsewhere"
    r = invoke("quantize", model, "--arch", "tinynet", "--method", "minmax", "--out", store)
    qdir = r.output.strip().splitlines()[-1]
    monkeypatch.chdir(tmp_path)
    r = invoke("export", qdir)
    assert r.exit_code == 0, r.output
    onnx_path = Path(r.output.strip().splitlines()[-1])
    assert onnx_path.is_file() and store.resolve() in onnx_path.resolve().parents
    assert not (tmp_path / "runs").exists()


def test_help_has_an_example_and_flags_take_no_value():
    for cmd in ("load", "quantize", "export", "verify", "run", "compare", "demo"):
        out = invoke(cmd, "--help").output
        assert "Example: zqtool " + cmd in out, cmd
    out = invoke("run", "--help").output
    assert "--trust-pickle " in out and "--trust-pickle <bool>" not in out
    assert "<portable|x86-vnni|arm64>" in out and "<cpu|paper>" in out and "<auto|cpu|cuda>" in out
    assert "<bnstat|gznq|lrq|minmax|zaq>" in out and "<qdq|int4>" in out


def test_list_shows_whole_method_descriptions_and_piped_tables_do_not_wrap():
    out = invoke("list", "methods").output
    lrq = next(line for line in out.splitlines() if line.strip().startswith("lrq"))
    assert "2023" in lrq and lrq.rstrip().endswith("empty).")  # the whole first paragraph, on one line


def test_time_budget_scales_the_schedule_and_prints_the_plan_first(files, tmp_path):
    model, _ = files
    r = invoke("quantize", model, "--arch", "tinynet", "--method", "bnstat", "--bits", "4", "--set", "iterations=40",
               "--set", "num_images=64", "--set", "batch_size=16", "--time-budget", "0.001s", "--out", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    assert "schedule: about" in r.output and "scaled synthesis.num_images 64→32" in r.output
    quant = json.loads((Path(r.stdout.strip().splitlines()[-1]) / "quant.json").read_text())
    assert quant["schedule"]["budget_s"] == 0.001 and quant["method_config"]["synthesis"]["num_images"] == 32
    assert quant["method_config"]["synthesis"]["iterations"] == 20  # the floors: nothing smaller fits either


def test_list_methods_states_the_cpu_time_budgets():
    out = invoke("list", "methods").output
    assert "[cls] = trains on class logits" in out
    assert any(line.strip().startswith("bnstat") and "cpu ≤" in line for line in out.splitlines())
