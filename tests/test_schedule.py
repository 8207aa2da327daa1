"""Time budgets: durations, the fit of a method's phases, and the plan recorded by a quantize run."""

from __future__ import annotations

import json

import pytest

from toolchain.artifacts import Store
from toolchain.core.errors import ConfigError
from toolchain.methods.config import build_config
from toolchain.methods.registry import get_method
from toolchain.methods.schedule import fit_schedule, format_duration, parse_duration
from toolchain.pipeline import load_stage, quantize_stage
from toolchain.quant.scheme import QuantScheme

from helpers import FAST_BNSTAT, tiny_state_dict_file


def test_durations():
    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("600") == 600 and parse_duration("none") is None and parse_duration(None) is None
    with pytest.raises(ConfigError, match="15m"):
        parse_duration("fifteen minutes")
    assert format_duration(65) == "1 min 05 s" and format_duration(30) == "30 s"
    with pytest.raises(ConfigError, match="time_budget"):
        build_config(get_method("bnstat").Config, {"time_budget": "soon"})


def phases_of(cls):
    return lambda c: cls(c).phases(QuantScheme.from_bits(4), lambda kind, key: False)


def test_fit_lowers_the_knobs_until_the_estimate_fits_and_respects_floors():
    cls = get_method("bnstat")
    cfg = build_config(cls.Config, {"num_images": "256", "batch_size": "64", "iterations": "100"})
    # 400 steps x 64 images x 1 pass at 10 ms = 256 s
    same, plan = fit_schedule(cfg, phases_of(cls), 300, 0.01)
    assert same == cfg and not plan.changes and plan.estimate_s == pytest.approx(256)
    fitted, plan = fit_schedule(cfg, phases_of(cls), 60, 0.01)
    assert plan.fits and plan.estimate_s <= 60 and fitted.synthesis.num_images < 256
    assert [c.path for c in plan.changes][0] == "synthesis.num_images"
    floor, plan = fit_schedule(cfg, phases_of(cls), 1, 0.01)
    assert floor.synthesis.num_images == 32 and floor.synthesis.iterations == 20 and not plan.fits
    assert "floors" in plan.summary()


def test_cached_phases_cost_nothing_and_are_not_scaled():
    cls = get_method("bnstat")
    cfg = build_config(cls.Config, {"num_images": "256", "reconstruct": "adaround"})
    fitted, plan = fit_schedule(cfg, lambda c: cls(c).phases(QuantScheme.from_bits(4), lambda k, d: True), 10, 0.01)
    assert fitted.synthesis == cfg.synthesis and fitted.recon.steps < cfg.recon.steps
    assert plan.phases[0][2] is True and plan.phases[0][1] == 0


def test_quantize_records_the_schedule(tmp_path):
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    q = quantize_stage(fp, method="bnstat", scheme=QuantScheme.from_bits(4),
                       overrides={**FAST_BNSTAT, "time_budget": "10m"}, store=store)
    sched = json.loads((q.dir / "quant.json").read_text())["schedule"]
    assert sched["budget_s"] == 600 and sched["phases"][0]["name"] == "synthesis" and sched["wall_s"] >= 0
    q2 = quantize_stage(fp, method="minmax", scheme=QuantScheme.from_bits(4), store=store)
    assert json.loads((q2.dir / "quant.json").read_text())["schedule"] is None  # nothing long to plan


@pytest.mark.parametrize("name", ["zaq", "lrq"])
def test_refinement_of_q_batches_counts_in_the_round_estimate(name):
    """Every ZeroQ refinement step on a Q batch is one more BN-statistics step per image (LRQ's cpu
    recipe runs 10 of them per Q step: the estimate ran 4x short without them), at the probed cost."""
    cls = get_method(name)
    plain, refined = (build_config(cls.Config, {"rounds": "10", "q_steps": "2", "q_refine_steps": str(k)})
                      for k in (0, 10))
    game = [(p for p in cls(c).phases(QuantScheme.from_bits(4), lambda k, d: False)
             if p.name == "adversarial rounds") for c in (plain, refined)]
    a, b = (next(g) for g in game)
    assert b.cost == pytest.approx(a.cost + 2 * 10)
    probed = cls(refined, {"bn_synthesis": 2.5}).phases(QuantScheme.from_bits(4), lambda k, d: False)
    assert next(p for p in probed if p.name == "adversarial rounds").cost == pytest.approx(a.cost + 2 * 10 * 2.5)


def test_synthesis_phases_count_the_probed_bn_step_cost(tmp_path):
    """A BN-statistics step is timed, not assumed to cost one FP pass (it cost 2.0 on MobileNetV2,
    whose synthesis ran 2.4x its estimate): the probe returns it for a model with BN, nothing
    for one without, and every synthesis phase (a method's set, the reconstruction set) uses it."""
    import torch

    from toolchain.quant.rewrite import fp_graph_module
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    teacher = fp_graph_module(fp.program()).eval()
    n_nodes = len(teacher.graph.nodes)
    costs = get_method("bnstat").probe_costs(teacher, fp.meta.input_shape, torch.device("cpu"), 1e-3)
    assert costs["bn_synthesis"] > 0 and len(teacher.graph.nodes) == n_nodes  # taps went into a copy
    no_bn = fp_graph_module(torch.export.export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                                                (torch.randn(1, 3, 8, 8),)))
    assert get_method("bnstat").probe_costs(no_bn, (3, 8, 8), torch.device("cpu"), 1e-3) == {}
    for name, kinds in (("bnstat", {"synthesis"}), ("gznq", {"synthesis"}), ("zaq", {"reconstruction set"})):
        cls = get_method(name)
        cfg = build_config(cls.Config, {"reconstruct": "adaround"})
        plain, probed = (cls(cfg, c).phases(QuantScheme.from_bits(4), lambda k, d: False)
                         for c in ({}, {"bn_synthesis": 3.0}))
        for a, b in zip(plain, probed):
            assert b.cost == pytest.approx(a.cost * 3.0 if a.name in kinds else a.cost), (name, a.name)
