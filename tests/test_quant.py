"""Quantizer arithmetic, BN folding and the graph rewrite (deploy scheme)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolchain.core.errors import ConfigError, UnsupportedModelError
from toolchain.quant.calibrate import calibrate, set_input_range
from toolchain.quant.fake_quant import fake_quantize, quantize
from toolchain.quant.fold import fold_bn
from toolchain.quant.quantizers import (IntWeightPerChannelFloat, ShiftedUintActPerTensorFloat,
                                        UintActPerTensorFloat)
from toolchain.quant.rewrite import quantize_graph
from toolchain.quant.scheme import QuantScheme


def export(m, shape=(3, 16, 16)):
    return torch.export.export(m.eval(), (torch.randn(2, *shape),),
                               dynamic_shapes=({0: torch.export.Dim("batch")},))


class Net(nn.Module):
    """conv-bn-relu6 stem, a residual block with an option-A shortcut, GAP, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)
        for bn in (self.bn, self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = F.relu6(self.bn(self.conv(x)))
        o = F.relu(self.bn1(self.conv1(x)))
        o = self.bn2(self.conv2(o))
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        x = F.relu(o + sc)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- arithmetic
def test_rounding_is_half_to_even_like_onnx():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 2.5001])
    q = quantize(x, torch.tensor(1.0), torch.tensor(0.0), -128, 127)
    assert q.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 2.0, 3.0]


def test_fake_quant_clamps_and_passes_straight_through_gradient():
    x = torch.tensor([-3.0, 0.26, 10.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.5), torch.tensor(2.0), 0, 15)
    # codes: clamp(round(x/0.5)+2, 0, 15) = [0, 3 (0.52 rounds to 1), 15] → (q-2)*0.5
    assert y.tolist() == [-1.0, 0.5, 6.5]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_weight_quantizer_is_symmetric_narrow_range_per_channel():
    w = torch.tensor([[1.75, -0.625, 0.875], [0.35, -0.35, 0.1]])
    q = IntWeightPerChannelFloat(4, 2)
    q.init_from(w)
    assert (q.qmin, q.qmax) == (-7, 7)
    assert torch.allclose(q.effective_scale(), torch.tensor([0.25, 0.05]))
    codes = q.int_repr(w)
    assert codes.dtype == torch.int8
    # -0.625/0.25 = -2.5 → -2 and 0.875/0.25 = 3.5 → 4: half to even, as ONNX QuantizeLinear
    assert codes.tolist() == [[7, -2, 4], [7, -7, 2]]


def test_activation_quantizers_ranges():
    u = UintActPerTensorFloat(4)
    u.set_range(-1.0, 3.0)  # unsigned ignores the negative side
    assert (u.qmin, u.qmax, int(u.zero_point)) == (0, 15, 0)
    assert u.range() == pytest.approx((0.0, 3.0))
    s = ShiftedUintActPerTensorFloat(8)
    s.set_range(-1.0, 3.0)
    lo, hi = s.range()
    assert lo <= -1.0 + 1e-6 and hi >= 3.0 - 0.02
    # zero is exactly representable
    assert fake_quantize(torch.zeros(1), s.effective_scale(), s.zero_point, 0, 255).item() == 0.0


def test_scheme_validates_bits():
    assert QuantScheme.from_bits(4).wbits == 4
    assert QuantScheme.from_bits(4, abits=8) == QuantScheme(4, 8, 8)
    with pytest.raises(ConfigError, match="2..8"):
        QuantScheme.from_bits(9)
    with pytest.raises(ConfigError):
        QuantScheme(wbits=4, abits=1)


# ----------------------------------------------------------------------------- folding
def test_fold_bn_matches_conv_then_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, bias=True), nn.BatchNorm2d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.1, 2)
    bn.weight.data.uniform_(-2, 2)
    bn.eval()
    w, b = fold_bn(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(F.conv2d(x, w, b), bn(conv(x)), atol=1e-5)


# ----------------------------------------------------------------------------- rewrite
@pytest.fixture(scope="module")
def qnet():
    torch.manual_seed(0)
    m = Net().eval()
    return m, quantize_graph(export(m), QuantScheme.from_bits(4))


def test_rewrite_float_mode_equals_fp_model(qnet):
    m, qm = qnet
    x = torch.randn(3, 3, 16, 16)
    with qm.float_mode():
        assert torch.allclose(qm(x), m(x), atol=1e-5)
    assert not any("batch_norm" in str(n.target) for n in qm.gm.graph.nodes), "BN must be folded"


def test_rewrite_places_quantizers_per_deploy_scheme(qnet):
    _, qm = qnet
    aq = qm.act_quantizers()
    kinds = {name: type(q).__name__ for name, q in aq.items()}
    assert kinds["act_quant.input"] == "ShiftedUintActPerTensorFloat"      # network input, signed values
    assert kinds["act_quant.conv"] == "UintActPerTensorFloat"              # after ReLU6
    assert kinds["act_quant.conv1"] == "UintActPerTensorFloat"             # after ReLU
    assert kinds["act_quant.conv2"] == "ShiftedUintActPerTensorFloat"      # residual branch before the add
    assert "act_quant.fc" not in kinds                                     # logits stay float
    # every Conv/Linear/Add/Pool input is a quantizer output, possibly through slice/pad/flatten
    grid_ops = {"slice", "pad", "flatten"}
    for n in qm.gm.graph.nodes:
        is_compute = (n.op == "call_module" and not n.target.startswith("act_quant")) or \
            (n.op == "call_function" and any(k in str(n.target) for k in ("add.Tensor", "adaptive_avg_pool2d")))
        if not is_compute:
            continue
        for a in n.all_input_nodes:
            while a.op == "call_function" and any(k in str(a.target) for k in grid_ops):
                a = a.args[0]
            assert a.op == "call_module" and a.target.startswith("act_quant"), f"{n.name} input {a.name}"


def test_first_last_layers_and_edges_get_first_last_bits(qnet):
    _, qm = qnet
    layers = qm.layers()
    assert layers["conv"].role == "first" and layers["fc"].role == "last"
    # portable target: 8-bit weights on 8-bit inputs are narrowed to 7-bit codes (int16-pair safe)
    assert layers["conv"].weight_quant.bits == 7 and layers["fc"].weight_quant.bits == 7
    assert layers["conv"].weight_quant.qmax == 63
    assert layers["conv1"].weight_quant.bits == 4
    aq = qm.act_quantizers()
    assert aq["act_quant.input"].bits == 8
    assert aq["act_quant.adaptive_avg_pool2d"].bits == 8     # input of the last layer
    assert aq["act_quant.conv1"].bits == 4


def test_full_range_targets_keep_8bit_first_last_weights(qnet):
    m, _ = qnet
    for target in ("x86-vnni", "arm64"):
        qm = quantize_graph(export(m), QuantScheme.from_bits(4, target=target))
        layers = qm.layers()
        assert layers["conv"].weight_quant.bits == 8 and layers["fc"].weight_quant.bits == 8
        assert layers["conv1"].weight_quant.bits == 4


def test_bias_is_int32_with_scale_sin_times_sw(qnet):
    _, qm = qnet
    set_input_range(qm, (0.5,) * 3, (0.25,) * 3)
    calibrate(qm, [torch.randn(4, 3, 16, 16)], skip=["act_quant.input"])
    layer = qm.layers()["conv1"]
    s = layer.bias_scale()
    expected = layer.input_quant.effective_scale() * layer.weight_quant.effective_scale()
    assert torch.equal(s, expected)
    assert layer.int_bias().dtype == torch.int32
    assert torch.allclose(layer.quant_bias(), layer.int_bias().float() * s)


def test_quantized_model_is_close_to_fp_at_8_bits():
    torch.manual_seed(0)
    m = Net().eval()
    qm = quantize_graph(export(m), QuantScheme.from_bits(8))
    x = torch.randn(16, 3, 16, 16).clamp(-2, 2)
    set_input_range(qm, (0.5,) * 3, (0.25,) * 3)
    calibrate(qm, [x], skip=["act_quant.input"])
    ref = m(x)
    err = (qm(x) - ref).abs().max() / ref.abs().max()
    assert err < 0.05


def test_rewrite_rejects_model_without_conv_or_linear():
    class NoLayers(nn.Module):
        def forward(self, x):
            return F.relu(x).mean(dim=(2, 3))
    with pytest.raises(UnsupportedModelError, match="no Conv2d or Linear"):
        quantize_graph(export(NoLayers()), QuantScheme())


def test_quantized_model_trains_through_ste(qnet):
    _, qm = qnet
    qm.learn_scales(weights=True, acts=True)
    out = qm(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    layer = qm.layers()["conv1"]
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert qm.act_quantizers()["act_quant.conv1"].scale.grad is not None
    qm.learn_scales(False, False)
