"""`zqtool compare`: every method × bit width through the cached pipeline; its JSON, markdown and
plot; resume after an interruption; a failing pair as a row; bad options as one-line errors.
All on the tiny model (seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolchain.artifacts import Store
from toolchain.cli import app
from toolchain.compare import CompareRow, compare, load_rows, markdown_table, split_overrides, write_plot
from toolchain.core.errors import ConfigError, UnsupportedModelError
from toolchain.methods.bnstat import BNStat
from toolchain.methods.minmax import MinMax
from toolchain.quant.scheme import QuantScheme

from helpers import FAST_BNSTAT, tiny_npz, tiny_state_dict_file

runner = CliRunner()
FAST_SET = [a for k, v in FAST_BNSTAT.items() for a in ("--set", f"bnstat.{k}={v}")]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    return tiny_state_dict_file(tmp_path), tiny_npz(tmp_path)


def counting(cls, monkeypatch, fail_at_bits=None, exc=KeyboardInterrupt):
    """Patch ``cls.run`` to record the weight bit width of every call (and raise ``exc`` at one)."""
    calls, original = [], cls.run

    def run(self, ctx):
        calls.append(ctx.scheme.wbits)
        if ctx.scheme.wbits == fail_at_bits:
            raise exc("minmax cannot do this here") if exc is not KeyboardInterrupt else exc
        return original(self, ctx)
    monkeypatch.setattr(cls, "run", run)
    return calls


def test_compare_two_methods_two_bits(files, tmp_path):
    model, data = files
    out = tmp_path / "cmp"
    r = invoke("compare", model, "--arch", "tinynet", "--data", data, "--methods", "minmax,bnstat",
               "--bits", "8,4", *FAST_SET, "--latency-runs", "2", "--parity-images", "8",
               "--store", tmp_path / "runs", "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == str(out / "compare.json")
    assert "zqtool compare" in r.stdout and "bnstat" in r.stdout  # the rich table

    result = json.loads((out / "compare.json").read_text())
    assert result["complete"] and result["model_name"] == "tinynet"
    assert result["settings"]["overrides"] == {"minmax": {}, "bnstat": FAST_BNSTAT}
    assert result["command"] is None or result["command"].startswith("zqtool compare")
    rows = result["rows"]
    assert [(r["method"], r["wbits"], r["abits"], r["status"]) for r in rows] == \
        [("minmax", 8, 8, "ok"), ("minmax", 4, 4, "ok"), ("bnstat", 8, 8, "ok"), ("bnstat", 4, 4, "ok")]
    for row in rows:  # every number is the pair's own report's
        tag = QuantScheme.from_bits(row["wbits"]).tag
        rep = json.loads((out / "reports" / f"{row['method']}-{tag}-t1.json").read_text())
        assert rep["quantize"]["method"] == row["method"] and rep["quantize"]["scheme"]["wbits"] == row["wbits"]
        assert row["fp32_top1"] == rep["fp32"]["top1"] and row["top1"] == rep["quantized"]["top1"]
        assert row["top1_stderr"] == rep["top1_stderr"] and row["agreement_top1"] == rep["agreement_top1"]
        assert row["top1_drop"] == pytest.approx(rep["fp32"]["top1"] - rep["quantized"]["top1"])
        assert row["quantize_wall_s"] == rep["quantize"]["wall_s"] and row["n_images"] == 40
        (lat,) = row["latency"]
        assert lat["threads"] == 1 and lat["qdq_p50_ms"] == rep["latency_ms"]["quantized"]["p50"]
        assert lat["ratio"] == pytest.approx(lat["qdq_p50_ms"] / rep["latency_ms"]["fp32"]["p50"])
        assert row["bytes_qdq"] == rep["bytes"]["quantized"] == Path(rep["artifacts"]["qdq"]).stat().st_size
        assert row["parity"] == rep["parity"]

    md = (out / "compare.md").read_text()
    assert "| model | method | W/A (first/last) | FP32 top-1 | QDQ top-1 | Δ top-1 |" in md
    assert "p50 ms FP32 → QDQ (1 thr)" in md and "Status: complete" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| tinynet |")]
    assert len(table_rows) == 4
    for line, row in zip(table_rows, rows):
        assert f"| {row['method']} | W{row['wbits']}A{row['abits']} (8) |" in line
        assert f"{row['top1']:.2f} ± {row['top1_stderr']:.2f}" in line
    assert markdown_table(load_rows([out / "compare.json"])) in md  # examples/results_table.py's table
    assert [r.to_dict() for r in load_rows([out / "compare.json"])] == rows  # the rows read back
    by_reports = load_rows(sorted((out / "reports").glob("*.json")))  # rows rebuilt from the run reports
    assert {(r.method, r.wbits): r.top1 for r in by_reports} == {(r["method"], r["wbits"]): r["top1"] for r in rows}
    png = out / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result["plot"] == str(png)


def test_interrupted_compare_resumes_without_recomputing(files, tmp_path, monkeypatch):
    model, data = files
    store, out = Store(tmp_path / "runs"), tmp_path / "cmp"
    kw = dict(methods=["minmax", "bnstat"], bits=[8, 4], out_dir=out, load_options={"arch": "tinynet"},
              overrides={"bnstat": FAST_BNSTAT}, latency_runs=2, parity_images=0, store=store)
    calls = counting(MinMax, monkeypatch, fail_at_bits=4)  # the second pair is interrupted
    with pytest.raises(KeyboardInterrupt):
        compare(model, data, **kw)
    assert calls == [8, 4]
    partial = json.loads((out / "compare.json").read_text())
    assert not partial["complete"]
    assert [r["status"] for r in partial["rows"]] == ["ok", "pending", "pending", "pending"]
    pending = partial["rows"][1]  # a pending row carries no measurement keys
    assert pending == {"model": "tinynet", "method": "minmax", "wbits": 4, "abits": 4, "first_last_bits": 8,
                       "status": "pending", "error": None}
    assert "in progress: 1 of 4 pairs done" in (out / "compare.md").read_text()
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()}
    first = partial["rows"][0]["artifacts"]

    monkeypatch.undo()
    minmax_calls, bnstat_calls = counting(MinMax, monkeypatch), counting(BNStat, monkeypatch)
    result = compare(model, data, **kw)
    assert minmax_calls == [4] and bnstat_calls == [8, 4]  # the finished pair's method did not run again
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing that existed was rewritten
    assert result.rows[0].artifacts.to_dict() == first and result.rows[0].top1 == partial["rows"][0]["top1"]
    final = json.loads((out / "compare.json").read_text())
    assert final["complete"] and [r["status"] for r in final["rows"]] == ["ok"] * 4
    assert len([ln for ln in (out / "compare.md").read_text().splitlines() if ln.startswith("| tinynet |")]) == 4


def test_a_failing_pair_is_a_failed_row_and_the_rest_still_run(files, tmp_path, monkeypatch):
    model, data = files
    out = tmp_path / "cmp"
    counting(MinMax, monkeypatch, fail_at_bits=8, exc=UnsupportedModelError)
    r = invoke("compare", model, "--arch", "tinynet", "--data", data, "--methods", "minmax", "--bits", "8,4",
               "--latency-runs", "2", "--parity-images", "0", "--no-plot", "--store", tmp_path / "runs",
               "--out", out)
    assert r.exit_code == 1, r.output
    assert "1 of 2 pairs failed" in r.output and "minmax cannot do this here" in r.output
    assert "Traceback" not in r.output
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert rows[0]["error"] == "minmax cannot do this here" and rows[0]["error_type"] == "UnsupportedModelError"
    assert "top1" not in rows[0] and rows[0]["pair_wall_s"] >= 0  # a failed row has no measurements
    assert CompareRow.from_dict(rows[0]).to_dict() == rows[0]
    assert "| failed: minmax cannot do this here |" in (out / "compare.md").read_text()
    assert not (out / "compare.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--methods", "minmax,nope"], "unknown method 'nope' in --methods"),
    (["--methods", ","], "--methods needs at least one value"),
    (["--bits", "8,9"], "--bits expects comma-separated integers in 2..8, got '9'"),
    (["--threads", "-1"], "--threads"),
    (["--budget", "huge"], "'huge' is not one of 'cpu', 'paper'"),
    (["--set", "nope.iterations=3"], "has a setting 'nope.iterations'"),
    (["--methods", "bnstat+nope"], "unknown post-step 'nope'"),
    (["--methods", "nope+adaround"], "unknown method 'nope+adaround'"),
    (["--set", "zzz=1"], "has a setting 'zzz'"),
    (["--set", "bnstat.zzz=1"], "unknown setting"),
    (["--format", "int2"], "'int2' is not one of 'qdq', 'int4'"),
])
def test_bad_options_are_one_line_errors_before_any_work(files, tmp_path, args, message):
    model, data = files
    r = invoke("compare", model, "--arch", "tinynet", "--data", data, "--methods", "minmax,bnstat", *args,
               "--store", tmp_path / "runs", "--out", tmp_path / "cmp")  # the last --methods wins
    assert r.exit_code == 2, r.output
    assert "error:" in r.output.lower() and message in r.output and "Traceback" not in r.output
    if args[0] == "--methods" and "nope" in args[1].split("+")[0]:
        assert "available: " in r.output and "bnstat" in r.output and "minmax" in r.output
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "runs" / "q").exists()


def test_set_routes_settings_to_methods():
    per = split_overrides(["iterations=5", "bnstat.iterations=7", "zaq.lr=0.1", "num_std=3"],
                          ["minmax", "bnstat", "gznq"])
    assert per["bnstat"]["iterations"] == "7" and per["gznq"]["iterations"] == "5"
    assert per["minmax"] == {"num_std": "3"} and "zaq" not in per  # zaq not compared: ignored
    with pytest.raises(ConfigError, match="key=value"):
        split_overrides(["iterations"], ["bnstat"])


def test_a_reconstruction_variant_is_a_method_entry_of_its_own():
    per = split_overrides(["iterations=5", "bnstat.iterations=7", "recon.steps=3"],
                          ["bnstat", "bnstat+adaround", "minmax"])
    assert per["bnstat+adaround"] == {"iterations": "7", "recon.steps": "3", "reconstruct": "adaround"}
    assert per["bnstat"] == {"iterations": "7", "recon.steps": "3"} and "reconstruct" not in per["bnstat"]
    both = split_overrides([], ["bnstat+bc+adaround", "minmax+bc"])
    assert both == {"bnstat+bc+adaround": {"bias_correction": "true", "reconstruct": "adaround"},
                    "minmax+bc": {"bias_correction": "true"}}


def test_compare_with_and_without_reconstruction(files, tmp_path):
    model, data = files
    out = tmp_path / "cmp"
    r = invoke("compare", model, "--arch", "tinynet", "--data", data, "--methods", "bnstat,bnstat+adaround,bnstat+bc",
               "--bits", "4", *FAST_SET, "--set", "recon.steps=4", "--set", "recon.batch=4", "--latency-runs", "2",
               "--parity-images", "0", "--store", tmp_path / "runs", "--out", out)
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(row["method"], row["status"]) for row in rows] == [("bnstat", "ok"), ("bnstat+adaround", "ok"),
                                                                ("bnstat+bc", "ok")]
    assert len({row["artifacts"]["q"] for row in rows}) == 3  # three quantized models
    rep = json.loads((out / "reports" / "bnstat+adaround-w4a4-fl8-t1.json").read_text())
    assert rep["quantize"]["method"] == "bnstat" and rep["quantize"]["reconstruct"] == "adaround"
    assert "reconstruct" not in json.loads((out / "reports" / "bnstat-w4a4-fl8-t1.json").read_text())["quantize"]
    assert json.loads((out / "reports" / "bnstat+bc-w4a4-fl8-t1.json").read_text())["quantize"]["bias_correction"] is True
    assert {r.method for r in load_rows(sorted((out / "reports").glob("*.json")))} == {"bnstat", "bnstat+adaround",
                                                                                       "bnstat+bc"}
    assert "| bnstat+adaround | W4A4 (8) |" in (out / "compare.md").read_text()


def test_plot_without_matplotlib_is_skipped_with_a_hint(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    rows = [CompareRow(model="m", method="minmax", wbits=8, abits=8, first_last_bits=8, status="ok", top1=90.0,
                       top1_stderr=1.0, fp32_top1=91.0, n_images=10)]
    warning = write_plot(rows, tmp_path / "compare.png", model_name="m", first_last_bits=8)
    assert "pip install zqtool[plot]" in warning and not (tmp_path / "compare.png").exists()


def test_row_status_is_checked():
    with pytest.raises(ValueError, match="status must be one of ok, failed, pending"):
        CompareRow(model="m", method="minmax", wbits=8, abits=8, first_last_bits=8, status="done")
