"""Empirical bias correction (Nagel et al. 2019 sec. 4.2): each layer's mean output shift removed on
the synthetic set, a setting of every method, the paper scheme's refusal — on tinynet in seconds."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from toolchain.artifacts import Store
from toolchain.core.errors import ConfigError
from toolchain.methods.config import build_config
from toolchain.methods.registry import get_method
from toolchain.models.loader import load_model
from toolchain.pipeline import load_stage, quantize_stage
from toolchain.quant.bias_correction import correct_biases
from toolchain.quant.rewrite import quantize_graph
from toolchain.quant.scheme import QuantScheme

from helpers import FAST_BNSTAT, calibrate_minmax, tiny_state_dict_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_state_dict_file(tmp_path_factory.mktemp("m")), arch="tinynet")


def images(n, seed):
    g = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.interpolate(torch.rand(n, 1, 3, 3, generator=g), size=8, mode="bilinear")
    return (blobs - 0.5) / 0.5


def layer_shifts(qm, ref, x) -> dict[str, torch.Tensor]:
    """Per layer, the (C,) mean of the quantized output minus the FP one's on ``x``."""
    outs: dict[str, dict[str, torch.Tensor]] = {"q": {}, "fp": {}}

    def hook(kind, name):
        def fn(m, i, y):
            outs[kind][name] = y.mean(dim=[0, *range(2, y.ndim)])
        return fn
    handles = [layer.register_forward_hook(hook("q", n)) for n, layer in qm.layers().items()]
    handles += [layer.register_forward_hook(hook("fp", n)) for n, layer in ref.layers().items()]
    with torch.no_grad():
        qm(x)
        with ref.float_mode():
            ref(x)
    for h in handles:
        h.remove()
    return {n: outs["q"][n] - outs["fp"][n] for n in outs["q"]}


def test_every_layers_mean_shift_is_removed_on_the_set_and_falls_on_other_images(tiny):
    qm = quantize_graph(tiny.program, QuantScheme.from_bits(3)).eval()
    calibrate_minmax(qm, images(64, seed=1))
    ref = quantize_graph(tiny.program, QuantScheme.from_bits(3)).eval()
    x, held_out = images(48, seed=2), images(64, seed=3)
    before, before_held = layer_shifts(qm, ref, x), layer_shifts(qm, ref, held_out)
    biases = {n: layer.bias.detach().clone() for n, layer in qm.layers().items()}
    log = correct_biases(qm, x, reference=ref, batch=16)  # three batches: the running mean is exact
    after, after_held = layer_shifts(qm, ref, x), layer_shifts(qm, ref, held_out)
    for name, layer in qm.layers().items():
        s = layer.bias_scale()  # exact up to the int32 bias grid (None: the bias is not quantized)
        lsb = torch.zeros_like(layer.bias) if s is None else s
        # what is left: under half a bias LSB, or (the layers after one that moved in the second
        # pass) a small share of the shift
        assert (after[name].abs() <= 0.5 * lsb + 1e-4 + 0.15 * before[name].abs().max()).all(), name
        assert after[name].abs().mean() < 0.5 * before[name].abs().mean() or before[name].abs().max() < 1e-3, name
        assert after_held[name].abs().mean() < before_held[name].abs().mean(), name
        if name == next(iter(before)):  # the first layer's input is the same before and after
            assert torch.allclose(biases[name] - layer.bias, before[name], atol=1e-4 + float(lsb.max()))
    assert log.images == 48 and set(log.shifts) == set(before) and all(v > 0 for v in log.shifts.values())
    assert not any(p.requires_grad and p.grad is not None for p in qm.parameters())


def test_the_models_must_have_the_same_layers_and_folded_bn(tiny):
    qm = quantize_graph(tiny.program, QuantScheme.from_bits(4)).eval()
    calibrate_minmax(qm, images(16, seed=1))
    other = copy.deepcopy(qm)
    other.layers = lambda: dict(list(qm.layers().items())[1:])
    with pytest.raises(ValueError, match="layers differ"):
        correct_biases(qm, images(8, seed=0), reference=other)
    next(iter(qm.layers().values())).bn_qat = torch.nn.Identity()
    with pytest.raises(ValueError, match="folded BN"):
        correct_biases(qm, images(8, seed=0), reference=copy.deepcopy(qm))


def test_bias_correction_is_a_setting_of_every_method():
    for name in ("minmax", "bnstat", "gznq", "lrq", "zaq"):
        cls = get_method(name)
        assert build_config(cls.Config, {}).bias_correction is False
        cfg = build_config(cls.Config, {"bias_correction": "true"})
        assert cfg.bias_correction is True and cls(cfg).needs_synthetic_images == (name != "zaq")


def test_quantize_logs_the_correction_and_then_the_reconstruction(tmp_path):
    store = Store(tmp_path / "runs")
    fp = load_stage(tiny_state_dict_file(tmp_path), arch="tinynet", store=store)
    scheme = QuantScheme.from_bits(4)
    plain = quantize_stage(fp, method="bnstat", scheme=scheme, overrides=FAST_BNSTAT, store=store)
    q = quantize_stage(fp, method="bnstat", scheme=scheme, store=store,
                       overrides={**FAST_BNSTAT, "bias_correction": "true"})
    log = json.loads((q.dir / "log.json").read_text())
    assert log["bias_correction"]["images"] == 16
    moved = [float((a.bias - b.bias).detach().abs().max()) for a, b in zip(q.model().layers().values(),
                                                                   plain.model().layers().values())]
    assert max(moved) > 0
    r = quantize_stage(fp, method="bnstat", scheme=scheme, store=store,
                       overrides={**FAST_BNSTAT, "bias_correction": "true", "reconstruct": "adaround",
                                  "recon.steps": "10", "recon.batch": "8"})
    log = json.loads((r.dir / "log.json").read_text())
    assert {"bias_correction", "reconstruction"} <= set(log)
