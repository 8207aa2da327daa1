"""Data-free mixed precision (``--size-budget``): the allocator, the size model against real exported
files, per-layer widths in the scheme and the rewrite, sensitivities on the synthetic set, and the
stage through quantize / run / compare — on tiny models, in seconds."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from typer.testing import CliRunner

from toolchain.artifacts import Store
from toolchain.cli import app
from toolchain.core.errors import ConfigError, UnsupportedModelError
from toolchain.core.meta import ModelMeta
from toolchain.export.onnx_graph import GraphBuilder
from toolchain.export.onnx_writer import write_qdq, written_bytes
from toolchain.methods.checkpoint import Checkpointer
from toolchain.methods.config import SettingError
from toolchain.methods.sensitivity import (MixedPrecisionConfig, measure_sensitivity, measured_widths,
                                           mixed_precision_config, split_overrides)
from toolchain.models.tiny import TinyNet
from toolchain.pipeline import MP_STAGE, QArtifact, export_stage, load_stage, mixed_precision_stage, quantize_stage, run
from toolchain.quant.allocate import Option, allocate, check_size_budget
from toolchain.quant.rewrite import quantize_graph
from toolchain.quant.scheme import QuantScheme
from toolchain.quant.size import SIZE_MODELS, estimate_bytes, fixed_bytes
from toolchain.quant.spec import shifted_act_spec, unsigned_act_spec, weight_spec
from toolchain.reports import MixedPrecisionPlan, RunReport

from helpers import FAST_BNSTAT, calibrate_minmax, random_bn, recording_progress, tiny_npz, tiny_state_dict_file

runner = CliRunner()
FAST_MP = {**FAST_BNSTAT, "mp.images": "16", "mp.batch_size": "8"}


def fast_set(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture
def files(tmp_path):
    return tiny_state_dict_file(tmp_path), tiny_npz(tmp_path)


def stage_dirs(store: Store, stage: str) -> list:
    d = store.root / stage
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


# ----------------------------------------------------------------------------- the allocator
def four_layers(errors_at_4=(5.0, 1.0, 3.0, 0.5)):
    """Four layers of 100 weights: 8 bits (100 bytes, no error) or 4 bits (50 bytes, the given error)."""
    return [[Option(8, 100.0, 0.0), Option(4, 50.0, e)] for e in errors_at_4]


@pytest.mark.parametrize("at_8, expected", [
    (0, (4, 4, 4, 4)),
    (1, (8, 4, 4, 4)),   # the most sensitive layer (error 5) keeps 8 bits first
    (2, (8, 4, 8, 4)),   # then the next (error 3)
    (3, (8, 8, 8, 4)),
    (4, (8, 8, 8, 8)),
])
def test_allocator_keeps_the_most_sensitive_layers_wide_first(at_8, expected):
    reference = 400.0  # all four at 8 bits
    budget = (200.0 + 50.0 * at_8) / reference
    a = allocate(four_layers(), budget * reference, reference_bytes=reference)
    assert a.bits == expected
    assert a.bytes == 200.0 + 50.0 * at_8 <= a.budget_bytes
    assert a.error == pytest.approx(sum(e for e, b in zip((5.0, 1.0, 3.0, 0.5), expected) if b == 4))


def test_allocator_is_exact_and_respects_the_budget():
    rng = np.random.default_rng(0)
    for _ in range(150):
        layers = []
        for _ in range(int(rng.integers(1, 6))):
            n = int(rng.integers(1, 60))
            widths = sorted(rng.choice([2, 3, 4, 5, 6, 7, 8], int(rng.integers(1, 4)), replace=False), reverse=True)
            errs = np.sort(rng.random(len(widths)))
            layers.append([Option(int(b), n * b / 8, float(e)) for b, e in zip(widths, errs)])
        fixed = float(rng.integers(0, 30))
        budget = fixed + sum(min(o.bytes for o in opts) for opts in layers) + float(rng.random() * 150)
        feasible = [c for c in itertools.product(*layers) if fixed + sum(o.bytes for o in c) <= budget]
        best = min(sum(o.error for o in c) for c in feasible)
        a = allocate(layers, budget, fixed)
        assert a.bytes <= budget and a.error == pytest.approx(best)
        assert a.bytes == pytest.approx(fixed + sum(next(o.bytes for o in opts if o.bits == b)
                                                    for opts, b in zip(layers, a.bits)))


def test_infeasible_budget_is_a_clear_error():
    with pytest.raises(ConfigError) as e:
        allocate(four_layers(), 0.45 * 400.0, reference_bytes=400.0)
    assert "--size-budget 0.450 is below the smallest model" in e.value.message
    assert "0.500 of the all-8-bit model's 400 bytes" in e.value.message
    assert "--size-budget 0.500 or more" in e.value.hint
    for bad in (0, -0.5, 1.5, "x", float("nan"), True):
        with pytest.raises(ConfigError, match="--size-budget must be a fraction in"):
            check_size_budget(bad)
    assert check_size_budget("0.6") == 0.6 and check_size_budget(1) == 1.0


# ----------------------------------------------------------------------------- the size model
def wide_tiny(width: int = 24):
    """A TinyNet wide enough (about 16 k weights) for the fixed bytes not to dominate, its program and card."""
    torch.manual_seed(0)
    m = random_bn(TinyNet(10, 1, width=width))
    x = torch.randn(8, 1, 8, 8)
    meta = ModelMeta(input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), num_classes=10, arch="tinynet")
    return torch.export.export(m, (x,)), meta, x


def test_qdq_keeps_sub_8_bit_codes_in_bytes_the_int4_file_packs_them(tmp_path):
    program, meta, x = wide_tiny()
    sizes = {}
    for bits in (8, 4):
        qm = quantize_graph(program, QuantScheme.from_bits(wbits=bits, abits=8))
        calibrate_minmax(qm, x)
        for fmt in ("qdq", "int4"):
            sizes[bits, fmt] = write_qdq(qm, meta, tmp_path / f"w{bits}.{fmt}.onnx", fmt=fmt).stat().st_size
    assert sizes[4, "qdq"] == sizes[8, "qdq"]  # 8-bit containers whatever the width
    inner = sum(l.weight.numel() for l in qm.layers().values() if not l.role)
    assert sizes[8, "int4"] - sizes[4, "int4"] == pytest.approx(inner / 2, rel=0.02)  # two codes a byte


def test_packed_initializers_take_half_a_byte_a_code():
    b = GraphBuilder(21)
    codes = np.array([[-7, 3, 5], [-1, 2, -8], [7, 0, 1]])
    b.packed_initializer("w", TensorProto.INT4, codes)
    t = b.initializers[-1]
    assert len(t.raw_data) == 5 and not t.int32_data  # ceil(9 / 2) bytes, raw
    np.testing.assert_array_equal(numpy_helper.to_array(t), codes)
    b.packed_initializer("u", TensorProto.UINT4, np.array([0, 15, 9]))
    np.testing.assert_array_equal(numpy_helper.to_array(b.initializers[-1]), [0, 15, 9])


@pytest.mark.parametrize("size_model", ["int4", "packed"])
def test_size_estimate_matches_the_exported_file(tmp_path, size_model):
    """The estimate (the all-8-bit file minus its codes, plus each layer's codes at its width) against the
    bytes of the file a mixed scheme really writes."""
    program, meta, x = wide_tiny()
    model = SIZE_MODELS[size_model]
    names = list(quantize_graph(program, QuantScheme()).layers())
    ref = quantize_graph(program, QuantScheme(layer_wbits=[(n, 8) for n in names]))
    calibrate_minmax(ref, x)
    ref_layers = [(l.weight.numel(), l.weight_quant.bits) for l in ref.layers().values()]
    fixed = fixed_bytes(model, written_bytes(ref, meta, fmt=model.file_format), ref_layers)
    widths = dict(zip(names, (8, 4, 6, 4, 8)))
    qm = quantize_graph(program, QuantScheme(layer_wbits=widths))
    calibrate_minmax(qm, x)
    assert {n: l.weight_quant.bits for n, l in qm.layers().items()} == {**widths, **{
        n: 7 for n, b in widths.items() if b == 8}}  # portable: 8-bit weights on 8-bit inputs → 7
    estimate = estimate_bytes(model, fixed, [(l.weight.numel(), l.weight_quant.bits) for l in qm.layers().values()])
    if model.exported:  # the int4 file holds these bytes
        real = write_qdq(qm, meta, tmp_path / "mixed.onnx", fmt="int4").stat().st_size
        assert estimate == pytest.approx(real, rel=0.01)
    else:  # packed: b/8 bytes a code, a count below the qdq file's (8-bit containers)
        real = write_qdq(qm, meta, tmp_path / "mixed.onnx", fmt="qdq").stat().st_size
        packed_saving = sum(l.weight.numel() * (8 - l.weight_quant.bits) / 8 for l in qm.layers().values())
        assert estimate == pytest.approx(real - packed_saving, rel=0.01)


# ----------------------------------------------------------------------------- the scheme and the rewrite
def test_layer_widths_in_the_scheme():
    s = QuantScheme(abits=8, layer_wbits={"b.conv": 4, "a.conv": 8})
    assert s.layer_wbits == (("a.conv", 8), ("b.conv", 4)) and s.mixed and s.tag == "w4-8a8-mp"
    assert s.to_dict()["layer_wbits"] == [["a.conv", 8], ["b.conv", 4]]
    assert QuantScheme(**json.loads(json.dumps(s.to_dict()))) == s  # read back from config.json
    assert "layer_wbits" not in QuantScheme().to_dict()  # uniform schemes key caches as before
    a8 = unsigned_act_spec(8)
    assert s.layer_specs("", a8, name="b.conv") == (weight_spec(4), a8)
    assert s.layer_specs("", a8, name="a.conv") == (weight_spec(7), a8)  # then the portable rule
    assert s.layer_specs("first", shifted_act_spec(8), name="b.conv")[0] == weight_spec(4)  # edge layers too
    assert s.layer_specs("", a8, name="other") == (weight_spec(7), a8)  # not listed: its role's width
    for bad, msg in (([("a", 9)], "has width 9"), ([("a", 4), ("a", 8)], "listed twice"),
                     ([("", 4)], "non-empty string"), (["a"], "expected a \\(layer, bits\\) pair")):
        with pytest.raises(ConfigError, match=msg):
            QuantScheme(layer_wbits=bad)


def test_rewrite_gives_each_layer_its_width_and_refuses_unknown_layers(files):
    from toolchain.models.loader import load_model
    lm = load_model(files[0], arch="tinynet")
    uniform = quantize_graph(lm.program, QuantScheme(abits=4))
    qm = quantize_graph(lm.program, QuantScheme(abits=4, layer_wbits={"conv2": 3, "fc": 5}))
    bits = {n: l.weight_quant.bits for n, l in qm.layers().items()}
    assert bits == {**{n: l.weight_quant.bits for n, l in uniform.layers().items()}, "conv2": 3, "fc": 5}
    assert {n: q.bits for n, q in qm.act_quantizers().items()} == \
        {n: q.bits for n, q in uniform.act_quantizers().items()}  # weight-only: activations unchanged
    with pytest.raises(ConfigError, match="layer\\(s\\) this model does not have: layer9"):
        quantize_graph(lm.program, QuantScheme(layer_wbits={"layer9": 4}))


# ----------------------------------------------------------------------------- sensitivity
def test_settings_and_skipped_widths():
    assert measured_widths((8, 6, 4), SIZE_MODELS["int4"]) == ((8, 4), (6,))  # 6 saves no byte in int4
    assert measured_widths((8, 4, 3, 2), SIZE_MODELS["int4"]) == ((8, 4), (3, 2))
    assert measured_widths((8, 6, 4), SIZE_MODELS["packed"]) == ((8, 6, 4), ())
    assert split_overrides({"iterations": "3", "mp.images": "8"}) == ({"iterations": "3"}, {"images": "8"})
    from toolchain.pipeline import method_config
    cfg = mixed_precision_config(method_config("bnstat", "cpu", None, FAST_BNSTAT)[1], "cpu", {"candidates": "4,8"})
    assert cfg.widths == (8, 4) and cfg.synthesis.iterations == 3  # bnstat's own set: shared cache
    other = mixed_precision_config(method_config("minmax", "cpu")[1], "paper", {})
    assert other.synthesis.iterations == 500  # bnstat's paper recipe for a method without a ZeroQ set
    with pytest.raises(SettingError, match="bad setting 'candidates' for mp"):
        mixed_precision_config(None, "cpu", {"candidates": "8,9"})
    with pytest.raises(SettingError, match="bad setting 'metric' for mp"):
        mixed_precision_config(None, "cpu", {"metric": "l1"})


def test_sensitivity_grows_as_the_width_shrinks(files, tmp_path):
    from toolchain.models.loader import load_model
    lm = load_model(files[0], arch="tinynet")
    torch.manual_seed(0)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    cfg = MixedPrecisionConfig(candidates="8,6,4,2", size_model="packed", images=16, batch_size=8)
    calls = []
    sens = measure_sensitivity(lm.program, QuantScheme(), images, cfg, progress=recording_progress(calls))
    assert sens.candidates == (8, 6, 4, 2) and sens.skipped == () and sens.images == 16
    assert len(calls) == 5 * 4 and {"layer", "bits", "error"} <= set(calls[0][1])  # a step per (layer, width)
    for layer in sens.layers:
        assert layer.allocated and layer.errors[0] < layer.errors[2] < layer.errors[3], layer
        assert layer.bits == (7, 6, 4, 2)  # "8" is 7 on portable (8-bit inputs)
    assert sens.to_dict() == type(sens).from_dict(json.loads(json.dumps(sens.to_dict()))).to_dict()
    fixed = measure_sensitivity(lm.program, QuantScheme(), images,
                                MixedPrecisionConfig(candidates="8,4", first_last=False, images=16))
    assert [l.allocated for l in fixed.layers] == [False, True, True, True, False]  # first and last kept


def test_sensitivity_resumes_from_its_checkpoint(files, tmp_path):
    from toolchain.models.loader import load_model
    lm = load_model(files[0], arch="tinynet")
    images = torch.rand(8, 1, 8, 8)
    cfg = MixedPrecisionConfig(candidates="8,4", images=8)
    whole = measure_sensitivity(lm.program, QuantScheme(), images, cfg)

    class Stop(Exception):
        pass

    def stopping(description, total=None):
        class Task:
            n = 0

            def advance(self, n=1, **fields):
                Task.n += n
                if Task.n == 4:
                    raise Stop

            def close(self):
                pass
        return Task()
    ckpt = Checkpointer(tmp_path, "sensitivity.ckpt", {"key": "k"})
    with pytest.raises(Stop):
        measure_sensitivity(lm.program, QuantScheme(), images, cfg, progress=stopping, checkpointer=ckpt)
    calls = []
    resumed = measure_sensitivity(lm.program, QuantScheme(), images, cfg, progress=recording_progress(calls),
                                  checkpointer=ckpt)
    assert len(calls) == 1 + 10 - 4  # the resumed count at once, then the 6 steps left
    assert [l.errors for l in resumed.layers] == [l.errors for l in whole.layers]


# ----------------------------------------------------------------------------- the stage, quantize, run, compare
def test_quantize_with_a_size_budget_exports_the_chosen_widths_within_budget(files, tmp_path):
    model, _ = files
    out = tmp_path / "runs"
    r = runner.invoke(app, ["quantize", str(model), "--arch", "tinynet", "--size-budget", "0.9",
                            *fast_set(FAST_MP), "--out", str(out)])
    assert r.exit_code == 0, r.output
    q = QArtifact.open(r.stdout.strip().splitlines()[-1])
    assert "mixed precision: mp 0.90" in r.output and "--format int4" in r.output
    widths = q.scheme.layer_widths
    assert set(widths) == set(q.model().layers()) and 4 in widths.values() and 8 in widths.values()
    onnx_art = export_stage(q, fmt="int4", store=Store(out))
    m = onnx.load(str(onnx_art.qdq_path))
    inits = {t.name: t for t in m.graph.initializer}
    for name, layer in q.model().layers().items():
        t = inits[f"{name}.weight"]
        codes = numpy_helper.to_array(t).astype(int)
        assert t.data_type == (TensorProto.INT4 if widths[name] <= 4 else TensorProto.INT8)
        assert np.abs(codes).max() <= 2 ** (layer.weight_quant.bits - 1) - 1
        assert layer.weight_quant.bits == (widths[name] if widths[name] < 8 else 7)  # portable
    fp = load_stage(model, arch="tinynet", store=Store(out))
    mp = mixed_precision_stage(fp, size_budget=0.9, overrides=FAST_MP, store=Store(out))
    assert mp.scheme == q.scheme
    size = onnx_art.qdq_path.stat().st_size
    assert size <= mp.plan.budget_bytes * 1.01 and size == pytest.approx(mp.plan.estimated_bytes, rel=0.01)
    assert mp.plan.estimated_bytes <= mp.plan.budget_bytes == pytest.approx(0.9 * mp.plan.reference_bytes)


def test_the_sensitivities_are_cached_across_budgets_and_bad_budgets_are_errors(files, tmp_path):
    model, _ = files
    store = Store(tmp_path / "runs")
    fp = load_stage(model, arch="tinynet", store=store)
    a = mixed_precision_stage(fp, size_budget=0.95, overrides=FAST_MP, store=store)
    b = mixed_precision_stage(fp, size_budget=0.9, overrides=FAST_MP, store=store)
    assert stage_dirs(store, MP_STAGE) == [a.key] and a.key == b.key
    assert b.plan.estimated_bytes <= a.plan.estimated_bytes and a.plan.error <= b.plan.error
    with pytest.raises(ConfigError, match="below the smallest model"):
        mixed_precision_stage(fp, size_budget=0.5, overrides=FAST_MP, store=store)
    r = runner.invoke(app, ["quantize", str(model), "--arch", "tinynet", "--size-budget", "0.5",
                            *fast_set(FAST_MP), "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "error: --size-budget 0.500 is below the smallest model" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["quantize", str(model), "--arch", "tinynet", "--set", "mp.images=8",
                            "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "mixed-precision setting and there is no --size-budget" in r.output
    r = runner.invoke(app, ["quantize", str(model), "--arch", "tinynet", "--size-budget", "1.5",
                            "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "--size-budget must be a fraction in (0, 1]" in r.output


def test_a_model_without_batchnorm_is_refused(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    path = tmp_path / "nobn.pt2"
    torch.export.save(torch.export.export(net.eval(), (torch.randn(2, 1, 8, 8),)), str(path))
    fp = load_stage(path, mean=(0.5,), std=(0.5,), store=Store(tmp_path / "runs"))
    with pytest.raises(UnsupportedModelError, match="needs BatchNorm statistics"):
        mixed_precision_stage(fp, size_budget=0.9, store=Store(tmp_path / "runs"))


def test_run_and_compare_report_the_chosen_widths(files, tmp_path):
    model, data = files
    store = Store(tmp_path / "runs")
    report = run(model, data, load_options={"arch": "tinynet"}, method="minmax", fmt=None, size_budget=0.9,
                 overrides={"mp.synthesis.iterations": "3", "mp.synthesis.num_images": "16",
                            "mp.synthesis.batch_size": "8", "mp.images": "16"},
                 latency_runs=2, parity_images=8, store=store)
    mp = report.quantize.mixed_precision
    assert isinstance(mp, MixedPrecisionPlan) and mp.size_model == "int4" and mp.exported
    assert report.artifacts.qdq.endswith("model.int4.onnx")  # the file whose bytes the budget counts
    assert report.quantize.scheme["layer_wbits"] == sorted([l.name, l.bits] for l in mp.layers)
    d = report.to_dict()
    assert RunReport.from_dict(json.loads(json.dumps(d))).quantize.mixed_precision == mp
    assert "mixed_precision" not in run(model, data, load_options={"arch": "tinynet"}, method="minmax",
                                        latency_runs=2, parity_images=0, store=store).to_dict()["quantize"]

    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(model), "--arch", "tinynet", "--data", str(data), "--methods", "minmax",
                            "--bits", "8", "--size-budget", "0.9", "--set", "mp.synthesis.iterations=3",
                            "--set", "mp.synthesis.num_images=16", "--set", "mp.synthesis.batch_size=8",
                            "--set", "mp.images=16", "--latency-runs", "2", "--parity-images", "0",
                            "--store", str(tmp_path / "runs"), "--out", str(out), "--no-plot"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(x["wbits"], x.get("size_budget")) for x in rows] == [(8, None), (None, 0.9)]
    assert rows[1]["mp_widths"] == mp.widths() and rows[1]["avg_wbits"] == pytest.approx(mp.avg_wbits)
    assert "mp_widths" not in rows[0]
    md = (out / "compare.md").read_text()
    assert f"| mp 0.90 (avg {mp.avg_wbits:.1f} b), A8 (8) |" in md and "size budgets 0.9" in md
    assert (out / "reports" / "minmax-w8a8-mp0.9-t1.json").is_file()


def test_the_sensitivity_set_fits_the_methods_time_budget(files, tmp_path):
    model, _ = files
    store = Store(tmp_path / "runs")
    fp = load_stage(model, arch="tinynet", store=store)
    big = {**FAST_MP, "mp.synthesis.num_images": "64", "mp.synthesis.iterations": "40"}

    def synthetic_sets():
        return sorted((d["config"]["num_images"], d["config"]["iterations"])
                      for d in (json.loads(p.read_text()) for p in (store.root / "synth").glob("*/config.json")))

    mixed_precision_stage(fp, size_budget=0.95, overrides={**big, "time_budget": "0.001s"}, store=store)
    assert synthetic_sets() == [(32, 20)]  # scaled to the floors
    mixed_precision_stage(fp, size_budget=0.95, overrides={**big, "time_budget": "none"}, store=store)
    assert synthetic_sets() == [(32, 20), (64, 40)]
