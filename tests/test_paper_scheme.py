"""The paper scheme (toolchain.quant.protocol): BN unfolded, activation quantizers after ReLU only,
every layer at N bits, simulation only — for comparison with published tables."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from toolchain.artifacts import Store
from toolchain.cli import app
from toolchain.core.errors import ConfigError
from toolchain.graph import ops
from toolchain.models.loader import load_model
from toolchain.progress import null_progress
from toolchain.pipeline import export_stage, load_stage, quantize_stage, run
from toolchain.quant.rewrite import fp_graph_module, quantize_graph
from toolchain.quant.scheme import QuantScheme
from toolchain.reports import SimulatedRunReport

from helpers import FAST_BNSTAT, run_method, tiny_npz, tiny_state_dict_file

PAPER4 = QuantScheme.from_bits(4, protocol="paper")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def _count(gm, targets) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target in targets)


def test_paper_scheme_fields_tag_and_key():
    assert (PAPER4.wbits, PAPER4.abits, PAPER4.first_last_bits) == (4, 4, 4)  # every layer at N bits
    assert PAPER4.tag == "w4a4-paper" and PAPER4.to_dict()["protocol"] == "paper"
    assert QuantScheme(**PAPER4.to_dict()) == PAPER4
    assert "protocol" not in QuantScheme.from_bits(4).to_dict()  # deploy caches keep their keys
    assert PAPER4.spec("edge_weight") == PAPER4.spec("weight")
    assert PAPER4.spec("edge_act.unsigned") == PAPER4.spec("act.unsigned")
    with pytest.raises(ConfigError, match="--scheme must be one of deploy, paper"):
        QuantScheme(protocol="pape")
    with pytest.raises(ConfigError, match="need the deploy scheme"):
        QuantScheme(wbits=4, abits=4, layer_wbits={"conv1": 8}, protocol="paper")


def test_rewrite_keeps_bn_and_quantizes_only_after_relu(tiny):
    fp = fp_graph_module(tiny.program)
    n_bn, n_relu = _count(fp, ops.BATCH_NORM), _count(fp, ops.ACTIVATION)
    assert n_bn > 0 and n_relu > 0
    qm = quantize_graph(tiny.program, PAPER4)
    assert _count(qm.gm, ops.BATCH_NORM) == n_bn and qm.float_ops.get("batch_norm") == n_bn
    aq = qm.act_quantizers()
    assert len(aq) == n_relu and "act_quant.input" not in aq
    assert all(q.bits == 4 and q.qmin == 0 for q in aq.values())  # unsigned, after each ReLU/ReLU6
    for q in aq.values():  # every quantizer reads a ReLU/ReLU6 output, nothing else
        node = next(n for n in qm.gm.graph.nodes if n.op == "call_module" and qm.gm.get_submodule(n.target) is q)
        assert node.args[0].target in ops.ACTIVATION
    layers = qm.layers()
    assert {l.role for l in layers.values()} >= {"first", "last"}
    assert all(l.weight_quant.bits == 4 for l in layers.values())  # first and last too
    assert all(l.input_quant is None and l.bias_scale() is None for l in layers.values())  # float bias
    deploy = quantize_graph(tiny.program, QuantScheme.from_bits(4))
    assert "act_quant.input" in deploy.act_quantizers() and not deploy.float_ops.get("batch_norm")
    x = torch.randn(4, 1, 8, 8)
    with qm.float_mode():
        assert torch.equal(qm(x), fp(x))  # unquantized, the paper model is the FP model


@pytest.mark.parametrize("method,settings", [
    ("bnstat", {"num_images": 8, "iterations": 2, "batch_size": 8}),
    ("zaq", {"rounds": 2, "batch_size": 8, "calib_batches": 1, "checkpoint_every": 0}),
])
def test_methods_run_on_the_paper_scheme(tiny, method, settings):
    _, ctx, qm = run_method(method, tiny, settings, scheme=PAPER4)
    out = qm(torch.randn(4, 1, 8, 8))
    assert torch.isfinite(out).all()
    assert all(q.effective_scale() > 0 for q in qm.act_quantizers().values())


def test_run_simulates_and_export_refuses(tmp_path):
    model, data = tiny_state_dict_file(tmp_path), tiny_npz(tmp_path)
    store = Store(tmp_path / "runs")
    kw = dict(load_options={"arch": "tinynet"}, method="bnstat", scheme=PAPER4, overrides=FAST_BNSTAT,
              latency_runs=3, store=store)
    stages = []
    r = run(model, data, on_stage=lambda name, result, cached, s: stages.append((name, cached)), **kw)
    assert isinstance(r, SimulatedRunReport)
    assert [s for s, _ in stages] == ["load", "quantize", "simulate"]
    assert r.simulation.n_images == 40 and 0 <= r.simulation.top1 <= 100 and r.simulation.fp_top1 >= 0
    assert "no integer runtime" in r.simulation.reason
    assert r.quantize.scheme["protocol"] == "paper"
    assert not (store.root / "onnx").exists()
    json.dumps(r.to_dict())
    assert run(model, data, **kw) == SimulatedRunReport(r.simulation, r.quantize.__class__(
        **{**r.quantize.__dict__, "cached": True}), r.q_dir)  # every stage read back from the store
    q = quantize_stage(load_stage(model, arch="tinynet", store=store), method="bnstat", scheme=PAPER4,
                       overrides=FAST_BNSTAT, store=store)
    with pytest.raises(ConfigError, match="simulation only"):
        export_stage(q, store=store)


@pytest.mark.parametrize("settings,match", [({"bn_mode": "qat"}, "bn_mode=qat"),
                                             ({"reconstruct": "adaround"}, "reconstruct=adaround"),
                                             ({"bias_correction": "true"}, "bias_correction=True")])
def test_deploy_only_settings_are_refused_before_any_work(tmp_path, settings, match):
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    method = "zaq" if "bn_mode" in settings else "bnstat"
    with pytest.raises(ConfigError, match=match):
        quantize_stage(fp, method=method, scheme=PAPER4, overrides=settings, store=store)
    assert not (store.root / "q").exists()


def test_a_recipes_reconstruction_gives_way_to_the_paper_scheme(tmp_path):
    """zaq's cpu recipe ends with reconstruction, which the paper scheme has no blocks for: the
    recipe's default is turned off (and said), the user's own --set is refused (above)."""
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    said = []

    def progress(description, total=None):
        return null_progress(description, total)
    progress.say = said.append
    q = quantize_stage(fp, method="zaq", scheme=PAPER4, store=store, progress=progress,
                       overrides={"rounds": "2", "batch_size": "8", "calib_batches": "1", "checkpoint_every": "0"})
    assert json.loads((q.dir / "config.json").read_text())["method_config"]["reconstruct"] == "none"
    assert any("reconstruct=adaround is off" in m for m in said)


def test_cli_run_and_export(tmp_path):
    model, data = tiny_state_dict_file(tmp_path), tiny_npz(tmp_path)
    out = tmp_path / "runs"
    sets = [a for k, v in FAST_BNSTAT.items() for a in ("--set", f"{k}={v}")]
    r = CliRunner().invoke(app, ["run", str(model), "--arch", "tinynet", "--data", str(data), "--bits", "4",
                                 "--scheme", "paper", "--out", str(out), *sets])
    assert r.exit_code == 0, r.output
    assert "paper scheme" in r.output and "not exported" in r.output
    qdir = next((out / "q").iterdir())
    r = CliRunner().invoke(app, ["export", str(qdir), "--out", str(out)])
    assert r.exit_code == 2 and "simulation only" in r.output and "Traceback" not in r.output  # a usage error
