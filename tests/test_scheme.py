"""QuantSpec (one tensor's grid), the scheme's roles → specs, quantizers built from specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolchain.core.errors import ConfigError
from toolchain.quant.quantizers import (QUANTIZERS, IntWeightPerChannelFloat, ShiftedUintActPerTensorFloat,
                                        UintActPerTensorFloat, quantizer_from_spec)
from toolchain.quant.rewrite import quantize_graph
from toolchain.quant.scheme import ROLES, QuantScheme, activation_role, weight_role
from toolchain.quant.spec import QuantSpec, shifted_act_spec, unsigned_act_spec, weight_spec
from toolchain.targets import Target


# ----------------------------------------------------------------------------- QuantSpec
@pytest.mark.parametrize("spec, qmin, qmax", [
    (weight_spec(8), -127, 127), (weight_spec(4), -7, 7), (weight_spec(2), -1, 1),
    (QuantSpec("int8", 8, symmetric=True), -128, 127),
    (unsigned_act_spec(8), 0, 255), (unsigned_act_spec(3), 0, 7), (shifted_act_spec(4), 0, 15),
])
def test_spec_integer_range(spec, qmin, qmax):
    assert (spec.qmin, spec.qmax) == (qmin, qmax)


def test_spec_derived_properties():
    w = weight_spec(6, axis=1)
    assert w.signed and w.per_channel and w.axis == 1 and w.fixed_zero_point
    assert w.kind == ("int8", True, "zero")
    a = shifted_act_spec(8)
    assert not a.signed and not a.per_channel and not a.fixed_zero_point
    assert a.kind == ("uint8", False, "shifted")
    assert unsigned_act_spec(8).with_bits(5) == unsigned_act_spec(5)


@pytest.mark.parametrize("spec", [weight_spec(4), unsigned_act_spec(8), shifted_act_spec(2),
                                  QuantSpec("int8", 7, symmetric=True, axis=3)])
def test_spec_round_trips_through_a_dict(spec):
    d = spec.to_dict()
    assert set(d) == {"dtype", "bits", "symmetric", "narrow_range", "axis", "zero_point"}
    assert QuantSpec.from_dict(d) == spec


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="int4", bits=4), "unknown quantization dtype 'int4'"),
    (dict(dtype="uint8", bits=9), r"bits in 2\.\.8, got 9"),
    (dict(dtype="uint8", bits=1), r"bits in 2\.\.8, got 1"),
    (dict(dtype="uint8", bits=True), "got True"),
    (dict(dtype="uint8", bits=4.0), "got 4.0"),
    (dict(dtype="uint8", bits=8, narrow_range=True), "need signed codes"),
    (dict(dtype="uint8", bits=8, symmetric=True), "need signed codes"),
    (dict(dtype="int8", bits=8, symmetric=True, zero_point="shifted"), "symmetric spec has zero point 0"),
    (dict(dtype="int8", bits=8, zero_point="mid"), "unknown zero-point rule 'mid'"),
    (dict(dtype="int8", bits=8, symmetric=True, axis=-1), "axis must be an integer >= 0"),
])
def test_spec_rejects_nonsense(kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        QuantSpec(**kwargs)
    assert e.value.hint and "\n" not in str(e.value.message)


def test_spec_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown QuantSpec key"):
        QuantSpec.from_dict({**weight_spec(8).to_dict(), "granularity": "channel"})


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        weight_spec(8).bits = 4


# ----------------------------------------------------------------------------- the scheme's roles
def test_scheme_fields_and_dict_are_unchanged():
    """The four fields key caches and fill the model card: specs are derived, not stored."""
    s = QuantScheme.from_bits(4)
    assert s.to_dict() == {"wbits": 4, "abits": 4, "first_last_bits": 8, "target": "portable"}
    assert QuantScheme(**s.to_dict()) == s
    r = QuantScheme.from_bits(4, residual_bits=8)
    assert r.to_dict()["residual_bits"] == 8 and QuantScheme(**r.to_dict()) == r and r.tag == "w4a4-fl8-r8"
    assert QuantScheme.from_bits(4, residual_bits=4) == s  # the same as leaving it out: one cache key
    with pytest.raises(ConfigError, match="--residual-bits must be an integer"):
        QuantScheme.from_bits(4, residual_bits=9)
    with pytest.raises(ConfigError, match="--residual-bits needs the deploy scheme"):
        QuantScheme.from_bits(4, residual_bits=8, protocol="paper")


def test_scheme_maps_roles_to_specs():
    s = QuantScheme(wbits=4, abits=3, first_last_bits=6)
    assert s.spec("input") == shifted_act_spec(6)
    assert s.spec("act.unsigned") == unsigned_act_spec(3)
    assert s.spec("act.signed") == shifted_act_spec(3)
    assert s.spec("edge_act.unsigned") == unsigned_act_spec(6)
    assert s.spec("edge_act.signed") == shifted_act_spec(6)
    assert s.spec("weight") == weight_spec(4)
    assert s.spec("edge_weight") == weight_spec(6)
    assert s.spec("unread_act.signed") == shifted_act_spec(3)  # abits unless residual_bits is set
    assert QuantScheme(wbits=4, abits=3, residual_bits=8).spec("unread_act.signed") == shifted_act_spec(8)
    assert set(ROLES) == {"input", "act.unsigned", "act.signed", "edge_act.unsigned", "edge_act.signed",
                          "unread_act.unsigned", "unread_act.signed", "weight", "edge_weight"}
    with pytest.raises(ConfigError, match="unknown tensor role 'bias'"):
        s.spec("bias")


def test_role_helpers():
    assert activation_role(unsigned=True, edge=False) == "act.unsigned"
    assert activation_role(unsigned=False, edge=True) == "edge_act.signed"
    assert activation_role(unsigned=True, edge=True, network_input=True) == "input"
    assert activation_role(unsigned=False, edge=False, unread=True) == "unread_act.signed"
    assert activation_role(unsigned=False, edge=True, unread=True) == "edge_act.signed"  # edge wins
    assert [weight_role(r) for r in ("", "first", "last", "first+last")] == \
        ["weight", "edge_weight", "edge_weight", "edge_weight"]
    with pytest.raises(ConfigError, match="unknown layer position 'middle'"):
        weight_role("middle")


def test_layer_specs_apply_the_target_rule():
    a8 = unsigned_act_spec(8)
    portable = QuantScheme()
    assert portable.layer_specs("", a8) == (weight_spec(7), a8)           # 2·255·127 would saturate
    assert portable.layer_specs("first", shifted_act_spec(8)) == (weight_spec(7), shifted_act_spec(8))
    assert portable.layer_specs("", a8, depthwise=True) == (weight_spec(8), a8)  # exempt
    assert portable.layer_specs("", a8.with_bits(4)) == (weight_spec(8), a8.with_bits(4))
    assert QuantScheme(target="x86-vnni").layer_specs("last", a8) == (weight_spec(8), a8)
    w4 = QuantScheme.from_bits(4)
    assert w4.layer_specs("", unsigned_act_spec(4)) == (weight_spec(4), unsigned_act_spec(4))
    assert w4.layer_specs("last", a8) == (weight_spec(7), a8)              # first/last stay 8 → 7 bits


def test_target_narrowing_is_a_registry():
    assert Target("t", "", True, narrow="act").layer_bits(8, 8) == (8, 7)
    assert Target("t", "", True, narrow="weight").layer_bits(8, 8) == (7, 8)
    with pytest.raises(ConfigError, match="unknown narrow='both'"):
        Target("t", "", True, narrow="both")


# ----------------------------------------------------------------------------- quantizers from specs
@pytest.mark.parametrize("spec, cls", [(weight_spec(5), IntWeightPerChannelFloat),
                                       (unsigned_act_spec(4), UintActPerTensorFloat),
                                       (shifted_act_spec(8), ShiftedUintActPerTensorFloat)])
def test_quantizer_from_spec(spec, cls):
    q = quantizer_from_spec(spec, num_channels=3)
    assert type(q) is cls and q.spec == spec
    assert (q.bits, q.qmin, q.qmax) == (spec.bits, spec.qmin, spec.qmax)
    assert q.mode == "quant" and not q.scale.requires_grad
    assert q.scale.shape == ((3,) if spec.per_channel else ())


def test_quantizer_constructors_agree_with_specs():
    assert IntWeightPerChannelFloat(4, 2).spec == weight_spec(4)
    assert UintActPerTensorFloat(6).spec == unsigned_act_spec(6)
    assert ShiftedUintActPerTensorFloat(6).spec == shifted_act_spec(6)
    assert UintActPerTensorFloat(6).unsigned_input and not ShiftedUintActPerTensorFloat(6).unsigned_input
    assert set(QUANTIZERS) == {("int8", True, "zero"), ("uint8", False, "zero"), ("uint8", False, "shifted")}


@pytest.mark.parametrize("spec, match", [
    (QuantSpec("int8", 8, symmetric=True), "no quantizer implements"),                  # per-tensor int8
    (QuantSpec("int8", 8, symmetric=True, axis=0), "implements .*narrow_range=True"),   # not narrow
])
def test_quantizer_from_spec_refuses_unimplemented_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        quantizer_from_spec(spec, num_channels=4)


def test_per_channel_spec_needs_the_channel_count():
    with pytest.raises(ConfigError, match="needs the size of axis 0"):
        quantizer_from_spec(weight_spec(8))


# ----------------------------------------------------------------------------- the rewrite asks the scheme
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = F.relu(self.dw(x))
        x = self.conv2(x) + x
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("target", ["portable", "x86-vnni"])
def test_rewrite_builds_every_quantizer_from_the_scheme(target):
    torch.manual_seed(0)
    scheme = QuantScheme.from_bits(4, target=target)
    ep = torch.export.export(_Net().eval(), (torch.randn(2, 3, 8, 8),))
    qm = quantize_graph(ep, scheme)
    aq, layers = qm.act_quantizers(), qm.layers()
    assert aq["act_quant.input"].spec == scheme.spec("input")
    assert aq["act_quant.conv"].spec == scheme.spec("act.unsigned")
    assert aq["act_quant.dw"].spec == scheme.spec("act.unsigned")
    for name, layer in layers.items():
        expected, _ = scheme.layer_specs(layer.role, layer.input_quant.spec,
                                         depthwise=name == "dw")
        assert layer.weight_quant.spec == expected, name
    narrowed = 7 if target == "portable" else 8
    assert layers["conv"].weight_quant.bits == narrowed           # first layer, 8-bit input
    assert layers["fc"].weight_quant.bits == narrowed             # last layer
    assert layers["dw"].weight_quant.bits == 4 and layers["conv2"].weight_quant.bits == 4
    assert aq["act_quant.conv2"].spec == shifted_act_spec(4)  # the residual branch's output: abits
    for layer in layers.values():   # the weight quantizer is min-max initialized at its final width
        w = layer.weight.detach()
        amax = w.abs().amax(dim=tuple(range(1, w.ndim)))
        assert torch.equal(layer.weight_quant.scale.detach(), (amax / layer.weight_quant.qmax).clamp_min(1e-8))


def test_residual_bits_widen_only_the_tensors_no_layer_reads():
    """--residual-bits 8: the branch output before the Add gets 8 bits; every Conv/Linear input keeps
    its width, and the layers (weights, input grids) are exactly those of the plain scheme."""
    ep = torch.export.export(_Net().eval(), (torch.randn(2, 3, 8, 8),))
    plain = quantize_graph(ep, QuantScheme.from_bits(4))
    wide = quantize_graph(ep, QuantScheme.from_bits(4, residual_bits=8))
    a, b = plain.act_quantizers(), wide.act_quantizers()
    unread = {"act_quant.conv2", "act_quant.add"}  # the branch output; the sum, read only by the pool
    for n in unread:
        assert b[n].spec == shifted_act_spec(8) and a[n].spec == shifted_act_spec(4), n
    assert {n: q.spec for n, q in a.items() if n not in unread} == {n: q.spec for n, q in b.items() if n not in unread}
    assert {n: (l.weight_quant.spec, l.input_quant.spec) for n, l in plain.layers().items()} == \
        {n: (l.weight_quant.spec, l.input_quant.spec) for n, l in wide.layers().items()}
