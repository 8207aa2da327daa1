"""The four stages chained, content-keyed caching, atomic artifacts — on a tiny model in seconds."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from toolchain.artifacts import Store
from toolchain.core.errors import ConfigError, InputFileError
from toolchain.pipeline import QArtifact, export_stage, load_stage, quantize_stage, run
from toolchain.quant.scheme import QuantScheme
from toolchain.reports import RunReport

from helpers import FAST_BNSTAT, tiny_npz, tiny_state_dict_file


@pytest.fixture
def files(tmp_path):
    return tiny_state_dict_file(tmp_path), tiny_npz(tmp_path)


def stage_dirs(store: Store, stage: str) -> list:
    d = store.root / stage
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def test_run_end_to_end_and_rerun_does_no_work(files, tmp_path):
    model, data = files
    store = Store(tmp_path / "runs")
    kw = dict(load_options={"arch": "tinynet"}, method="bnstat", scheme=QuantScheme.from_bits(8),
              overrides=FAST_BNSTAT, latency_runs=3, parity_images=16, store=store)
    stages = []
    r1 = run(model, data, on_stage=lambda name, result, cached, s: stages.append((name, cached)), **kw)
    assert r1.verify.n_images == 40
    assert r1.verify.integer_ops.conv_integer == r1.verify.integer_ops.conv_total > 0
    assert r1.parity.off.max_diff_lsb < 1.0  # same int32 accumulators
    assert set(r1.to_dict()["artifacts"]) >= {"fp", "q", "onnx", "qdq", "fp32"}
    for stage in ("fp", "q", "onnx", "verify", "synth"):
        assert len(stage_dirs(store, stage)) == 1, stage
    mtimes = {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()}
    r2 = run(model, data, on_stage=lambda name, result, cached, s: stages.append((name, cached)), **kw)
    names = ["load", "quantize", "export", "verify", "parity"]
    assert stages == [(n, False) for n in names] + [(n, True) for n in names]  # every stage says if it was cached
    assert r1.quantize.cached is False and r2.quantize.cached is True
    # served from the cache: the stored report.json / parity.json read back equal what was computed
    assert r2 == dataclasses.replace(r1, quantize=dataclasses.replace(r1.quantize, cached=True))
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()} == mtimes
    d = r1.to_dict()
    assert list(d)[-3:] == ["quantize", "parity", "artifacts"] and RunReport.from_dict(d) == r1
    stored = json.loads(next((store.root / "verify").glob("*/report.json")).read_text())
    assert stored == {k: v for k, v in d.items() if k not in ("quantize", "parity", "artifacts")}


def test_changing_only_data_reruns_only_verify(files, tmp_path):
    model, data = files
    store = Store(tmp_path / "runs")
    kw = dict(load_options={"arch": "tinynet"}, method="minmax", latency_runs=3, parity_images=0, store=store)
    run(model, data, **kw)
    before = {s: stage_dirs(store, s) for s in ("fp", "q", "onnx", "verify")}
    run(model, tiny_npz(tmp_path, n=24, seed=1, name="other.npz"), **kw)
    after = {s: stage_dirs(store, s) for s in ("fp", "q", "onnx", "verify")}
    assert after["fp"] == before["fp"] and after["q"] == before["q"] and after["onnx"] == before["onnx"]
    assert len(after["verify"]) == 2


def test_same_seed_same_weights_other_seed_other_synthetic_set(files, tmp_path):
    model, _ = files
    states = []
    for i, seed in enumerate((0, 0, 1)):
        store = Store(tmp_path / f"s{i}")
        fp = load_stage(model, arch="tinynet", store=store)
        q = quantize_stage(fp, method="bnstat", scheme=QuantScheme.from_bits(4), overrides=FAST_BNSTAT,
                           seed=seed, store=store)
        states.append(torch.load(q.dir / "quantized.pt", weights_only=True))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_a_failing_stage_leaves_no_artifact(files, tmp_path, monkeypatch):
    model, _ = files
    store = Store(tmp_path / "runs")
    fp = load_stage(model, arch="tinynet", store=store)
    from toolchain.methods.minmax import MinMax

    def boom(self, ctx):
        raise KeyboardInterrupt
    monkeypatch.setattr(MinMax, "run", boom)
    with pytest.raises(KeyboardInterrupt):
        quantize_stage(fp, method="minmax", store=store)
    assert stage_dirs(store, "q") == []
    assert not any((store.root / "q").iterdir())  # no temporary directory left either


def test_quantize_artifact_records_how_it_was_made(files, tmp_path):
    model, _ = files
    store = Store(tmp_path / "runs")
    fp = load_stage(model, arch="tinynet", store=store)
    q = quantize_stage(fp, method="minmax", scheme=QuantScheme.from_bits(4, first_last_bits=6), store=store)
    cfg = json.loads((q.dir / "config.json").read_text())
    assert cfg["method"] == "minmax" and cfg["scheme"] == {"wbits": 4, "abits": 4, "first_last_bits": 6,
                                                           "target": "portable"}
    quant = json.loads((q.dir / "quant.json").read_text())
    assert quant["wall_s"] >= 0 and any(r["name"] == "act_quant.input" for r in quant["quantizers"])
    reopened = QArtifact.open(q.dir).model()
    assert reopened.layers()["conv1"].weight_quant.bits == 6  # first layer
    onnx = export_stage(q, store=store)
    assert onnx.qdq_path.is_file() and onnx.fp32_path.is_file()


def test_bad_inputs_are_clear_errors(files, tmp_path):
    model, _ = files
    store = Store(tmp_path / "runs")
    with pytest.raises(InputFileError, match="does not exist"):
        load_stage(tmp_path / "missing.pt", arch="tinynet", store=store)
    fp = load_stage(model, arch="tinynet", store=store)
    with pytest.raises(ConfigError, match="unknown method"):
        quantize_stage(fp, method="zzz", store=store)
    with pytest.raises(InputFileError, match="not a quantize run directory"):
        QArtifact.open(tmp_path)
    q = quantize_stage(fp, method="minmax", store=store)
    with pytest.raises(ConfigError, match="--format"):
        export_stage(q, fmt="int2", store=store)
    assert stage_dirs(store, "onnx") == []


def test_fp32_reference_is_the_fp_model_even_after_fine_tuning(files, tmp_path, monkeypatch):
    """A method that changes the weights (as ZAQ/GZNQ fine-tuning does) must not change the reference."""
    import numpy as np
    import onnxruntime as ort

    from toolchain.methods.minmax import MinMax
    model, _ = files
    store = Store(tmp_path / "runs")
    fp = load_stage(model, arch="tinynet", store=store)
    original = MinMax.run

    def finetune_badly(self, ctx):
        qm = original(self, ctx)
        with torch.no_grad():
            for layer in qm.layers().values():
                layer.weight.mul_(-3.0)
        return qm
    monkeypatch.setattr(MinMax, "run", finetune_badly)
    q = quantize_stage(fp, method="minmax", store=store)
    onnx = export_stage(q, store=store)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        expected = fp.program().module()(x)
    sess = ort.InferenceSession(str(onnx.fp32_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, expected.numpy(), atol=1e-4)


def test_same_seed_same_model_whether_the_synthetic_set_was_built_or_reused(files, tmp_path):
    """Building the cached synthetic set must not move the random stream the method continues with."""
    model, _ = files
    fresh, warm = Store(tmp_path / "fresh"), Store(tmp_path / "warm")
    fp_warm = load_stage(model, arch="tinynet", store=warm)
    quantize_stage(fp_warm, method="bnstat", scheme=QuantScheme.from_bits(8), overrides=FAST_BNSTAT, store=warm)
    reused = quantize_stage(fp_warm, method="bnstat", scheme=QuantScheme.from_bits(4), overrides=FAST_BNSTAT,
                            store=warm)
    assert json.loads((reused.dir / "quant.json").read_text())["reused"]  # the set came from the store
    built = quantize_stage(load_stage(model, arch="tinynet", store=fresh), method="bnstat",
                           scheme=QuantScheme.from_bits(4), overrides=FAST_BNSTAT, store=fresh)
    assert not json.loads((built.dir / "quant.json").read_text())["reused"]
    a, b = reused.model().state_dict(), built.model().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
