"""Method registry, recipes, BN-statistics losses, synthesis and the two baselines on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from toolchain.core.errors import ConfigError, UnsupportedModelError
from toolchain.methods.bn_stats import BNStatistics, gaussian_kl
from toolchain.methods.config import build_config, parse_overrides
from toolchain.methods.recipes import load_recipe
from toolchain.methods.registry import MethodContext, get_method, list_methods
from toolchain.methods.synthesis import SynthesisConfig, distill_images
from toolchain.models.loader import load_model
from toolchain.quant.rewrite import fp_graph_module, quantize_graph
from toolchain.quant.scheme import QuantScheme

from helpers import tiny_state_dict_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def ctx_for(lm, bits=8):
    teacher = fp_graph_module(lm.program)
    qm = quantize_graph(lm.program, QuantScheme.from_bits(bits))
    return MethodContext(teacher=teacher, qmodel=qm, meta=lm.meta, scheme=qm.scheme, device=torch.device("cpu"))


def test_registry_lists_and_rejects():
    assert {"minmax", "bnstat"} <= set(list_methods())
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        get_method("nope")


def test_config_from_recipe_and_overrides_is_typed():
    cls = get_method("bnstat")
    cfg = build_config(cls.Config, load_recipe("bnstat", "cpu"), parse_overrides(["iterations=7", "lr=0.5"]))
    assert cfg.synthesis.iterations == 7 and cfg.synthesis.lr == 0.5
    assert cfg.synthesis.num_images == load_recipe("bnstat", "cpu")["synthesis"]["num_images"]  # the recipe's
    with pytest.raises(ConfigError, match="unknown setting"):
        build_config(cls.Config, {"iterationz": 3})
    with pytest.raises(ConfigError, match="expects an int"):
        build_config(cls.Config, {"iterations": "many"})
    with pytest.raises(ConfigError, match="calibration"):
        build_config(cls.Config, {"calibration": "magic"})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["iterations"])


def test_recipe_without_budget_is_a_clear_error(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[cpu]\nnum_std = 3.0\n")
    assert load_recipe("minmax", "cpu", p) == {"num_std": 3.0}
    with pytest.raises(ConfigError, match=r"no \[paper\] table"):
        load_recipe("minmax", "paper", p)
    p.write_text("[cpu\n")
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe("minmax", "cpu", p)


def test_gaussian_kl_hand_computed():
    # KL(N(1, 4) || N(0, 1)) = 0.5 * (log(1/4) + (4 + 1)/1 - 1) = 0.5 * (2 - log 4)
    v = gaussian_kl(torch.tensor(1.0), torch.tensor(4.0), torch.tensor(0.0), torch.tensor(1.0))
    assert v.item() == pytest.approx(0.5 * (math.log(0.25) + 5 - 1))
    assert gaussian_kl(torch.tensor(0.3), torch.tensor(2.0), torch.tensor(0.3), torch.tensor(2.0)).item() == 0.0


def test_bn_statistics_taps_every_bn_and_synthesis_lowers_the_loss(tiny):
    teacher = fp_graph_module(tiny.program)
    bn = BNStatistics(teacher)
    assert len(bn) == 4  # stem, two in the residual block, the strided conv
    torch.manual_seed(0)
    teacher(torch.randn(16, 1, 8, 8))
    before = bn.loss("l2").item()
    cfg = SynthesisConfig(num_images=16, batch_size=16, iterations=30, lr=0.1)
    x = distill_images(teacher, bn, (1, 8, 8), (0.5,), (0.5,), cfg, torch.device("cpu"))
    assert x.shape == (16, 1, 8, 8)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6  # clamped to normalized [0, 1] pixels
    with torch.no_grad():
        teacher(x)
    assert bn.loss("l2").item() < 0.5 * before


def test_bn_statistics_requires_batchnorm():
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 3)).eval()
    ep = torch.export.export(m, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    with pytest.raises(UnsupportedModelError, match="no BatchNorm"):
        BNStatistics(fp_graph_module(ep))


@pytest.mark.parametrize("name,settings", [("minmax", {}), ("bnstat", {"iterations": 5, "num_images": 16,
                                                                         "batch_size": 8})])
def test_baselines_set_every_activation_range(tiny, name, settings):
    torch.manual_seed(0)
    ctx = ctx_for(tiny, bits=4)
    cls = get_method(name)
    qm = cls(build_config(cls.Config, settings)).run(ctx)
    for qname, q in qm.act_quantizers().items():
        lo, hi = q.range()
        assert math.isfinite(lo) and math.isfinite(hi) and hi > lo, qname
        assert q.range() != (0.0, float(q.qmax)), f"{qname} kept its default scale 1"
    # the input range is the exact image of [0, 1] pixels under mean/std 0.5
    lo, hi = qm.act_quantizers()["act_quant.input"].range()
    assert lo == pytest.approx(-1.0, abs=0.01) and hi == pytest.approx(1.0, abs=0.01)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        out = qm(x)
        with qm.float_mode():
            ref = qm(x)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < ref.abs().max()  # quantized output resembles the FP output
