"""minmax's moment propagation (toolchain.quant.bn_ranges) through the ops of modern mobile CNNs.

Smooth activations, squeeze-excitation products, standalone (pre-activation) BatchNorm, channel
shuffles and splits, upsampling, arithmetic with numbers — each rule checked against Monte-Carlo
estimates or a hand-checkable case; the ranges of the graphs minmax handled before these rules
checked against numbers captured from that earlier code; the five torchvision archives in
../shared run end to end.
"""

from __future__ import annotations

import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import MOBILENET_V2, RESNET20, SHARED, need
from toolchain.core.errors import UnsupportedModelError
from toolchain.quant.bn_ranges import (GH_POINTS, Moments, _value_bounds, gaussian_expectation,
                                       propagate_moments, set_ranges_from_bn)
from toolchain.quant.rewrite import quantize_graph
from toolchain.quant.scheme import QuantScheme

aten = torch.ops.aten
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ARCH_DIR = SHARED / "models" / "arch"
ARCHIVES = ["mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "densenet_slim",
            "seg_lraspp_mobilenet_v3_large"]


def export(m: nn.Module, shape=(3, 8, 8), dynamic: bool = True):
    x = torch.randn(2 if dynamic else 1, *shape)
    return torch.export.export(m.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None)


def qmodel(m: nn.Module, shape=(3, 8, 8), dynamic: bool = True, bits: int = 8):
    return quantize_graph(export(m, shape, dynamic), QuantScheme.from_bits(bits))


def node_of(qm, target, index: int = 0) -> str:
    """Name of the index-th node calling ``target`` in the quantized graph."""
    names = [n.name for n in qm.gm.graph.nodes if n.op == "call_function" and n.target is target]
    assert len(names) > index, f"no {target} node in the graph"
    return names[index]


def conv_bn(cin: int, cout: int, beta, gamma, k: int = 1) -> nn.Sequential:
    """Conv → BN whose folded output the propagation models as N(β, γ²) per channel."""
    bn = nn.BatchNorm2d(cout)
    bn.bias.data.copy_(torch.as_tensor(beta, dtype=torch.float32))
    bn.weight.data.copy_(torch.as_tensor(gamma, dtype=torch.float32))
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), bn)


def gaussians(beta, gamma, n: int, seed: int, spatial: int = 1) -> torch.Tensor:
    """n samples (n, C, spatial, spatial) of independent N(β_c, γ_c²), float64."""
    g = torch.Generator().manual_seed(seed)
    b = torch.as_tensor(beta, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.as_tensor(gamma, dtype=torch.float64).view(1, -1, 1, 1)
    return b + s * torch.randn(n, b.shape[1], spatial, spatial, generator=g, dtype=torch.float64)


def assert_close_to_samples(m: Moments, samples: torch.Tensor, rtol: float = 0.01):
    """Per-channel mean within rtol·sd and variance within rtol of the sample moments (N, C, H, W)."""
    mc_mean = samples.mean(dim=(0, 2, 3))
    mc_var = samples.var(dim=(0, 2, 3))
    mean, var = m.mean.flatten().double(), m.var.flatten().double()
    assert mean.shape == mc_mean.shape
    assert torch.all((mean - mc_mean).abs() <= rtol * mc_var.sqrt() + 1e-6), (mean, mc_mean)
    assert torch.all((var - mc_var).abs() <= rtol * mc_var + 1e-8), (var, mc_var)


# ----------------------------------------------------------------------------- the smooth-activation rule
SMOOTH = [F.hardswish, F.hardsigmoid, F.silu, torch.sigmoid, F.gelu, torch.tanh]


@pytest.mark.parametrize("f", SMOOTH, ids=lambda f: f.__name__)
def test_gauss_hermite_moments_match_a_million_samples(f):
    mu = torch.tensor([-2.0, -0.5, 0.3, 1.5, 3.0])
    sd = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.2])
    mean, var = gaussian_expectation(f, mu, sd ** 2)
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == (5,)
    g = torch.Generator().manual_seed(0)
    y = f(mu.double()[:, None] + sd.double()[:, None] * torch.randn(5, 1_000_000, generator=g, dtype=torch.float64))
    mc_mean, mc_var = y.mean(1), y.var(1)
    assert torch.all((mean.double() - mc_mean).abs() <= 0.01 * mc_var.sqrt()), (mean, mc_mean)
    assert torch.all((var.double() - mc_var).abs() <= 0.01 * mc_var), (var, mc_var)


def test_gauss_hermite_is_exact_for_polynomials_and_degenerate_gaussians():
    mu, var = torch.tensor([0.5, -1.0]), torch.tensor([4.0, 0.25])
    mean, v = gaussian_expectation(lambda x: x * x, mu, var)  # E[X²] = μ² + σ², Var[X²] = 4μ²σ² + 2σ⁴
    assert torch.allclose(mean, mu ** 2 + var) and torch.allclose(v, 4 * mu ** 2 * var + 2 * var ** 2)
    mean, v = gaussian_expectation(F.hardswish, torch.tensor([1.0]), torch.tensor([0.0]))
    assert mean.item() == pytest.approx(1.0 * 4.0 / 6.0) and v.item() == 0.0  # σ = 0: f(μ)
    assert GH_POINTS >= 64


@pytest.mark.parametrize("target, lo, hi", [
    (aten.hardswish.default, -0.375, None), (aten.hardsigmoid.default, 0.0, 1.0),
    (aten.sigmoid.default, 0.0, 1.0), (aten.tanh.default, -1.0, 1.0),
    (aten.silu.default, -0.2784645, None), (aten.gelu.default, -0.1699712, None)])
def test_value_bounds_of_the_activations(target, lo, hi):
    got_lo, got_hi = _value_bounds(target, (), ())
    assert got_lo == pytest.approx(lo, abs=1e-6)
    assert got_hi is None if hi is None else got_hi == pytest.approx(hi, abs=1e-9)


# ----------------------------------------------------------------------------- rules in graphs
class ConvBnHardswish(nn.Module):
    """MobileNetV3's Conv-BN-hardswish, then a Conv that reads it through a quantizer."""

    BETA, GAMMA = [-1.5, -0.5, 0.5, 2.0], [1.0, 0.3, 1.2, 0.8]

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 4, self.BETA, self.GAMMA, k=3)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(F.hardswish(self.stem(x)))


def test_conv_bn_hardswish_moments_match_monte_carlo_and_clip_at_its_minimum():
    qm = qmodel(ConvBnHardswish())
    moments, wanted = propagate_moments(qm, *IMAGENET)
    m = moments[node_of(qm, aten.hardswish.default)]
    assert m.mean.shape == (4, 1, 1) and m.shape == (4, 8, 8)
    assert_close_to_samples(m, F.hardswish(gaussians(ConvBnHardswish.BETA, ConvBnHardswish.GAMMA, 250_000, 1)))
    # the quantizer that the head reads: μ − 4σ dips below hardswish's minimum, which clips it
    name = "act_quant.hardswish"
    assert float((m.mean - 4 * m.var.sqrt()).min()) < -0.375 and wanted[name][0] == pytest.approx(-0.375)
    ranges = set_ranges_from_bn(qm, *IMAGENET)
    assert ranges[name][0] >= -0.375 - 0.01  # on the quantizer's grid


class SqueezeExcite(nn.Module):
    """x · hardsigmoid-gate (N, C, 1, 1), the gate from a pooled branch (MobileNetV3's SE)."""

    BX, GX = [0.5, -0.2, 1.0], [1.0, 0.5, 2.0]
    BS, GS = [0.0, 2.0, -1.0], [2.0, 1.0, 0.5]

    def __init__(self, act=F.relu):
        super().__init__()
        self.x = conv_bn(3, 3, self.BX, self.GX)
        self.s = conv_bn(3, 3, self.BS, self.GS)
        self.head = nn.Conv2d(3, 2, 1)
        self.act = act

    def forward(self, x):
        a = self.act(self.x(x))
        s = F.hardsigmoid(self.s(F.adaptive_avg_pool2d(a, 1)))
        return self.head(a * s)


def test_squeeze_excitation_product_matches_monte_carlo_of_independent_factors():
    qm = qmodel(SqueezeExcite())
    moments, wanted = propagate_moments(qm, *IMAGENET)
    mul = moments[node_of(qm, aten.mul.Tensor)]
    assert mul.mean.shape == (3, 1, 1) and mul.shape == (3, 8, 8)
    a = F.relu(gaussians(SqueezeExcite.BX, SqueezeExcite.GX, 1_000_000, 2))
    s = F.hardsigmoid(gaussians(SqueezeExcite.BS, SqueezeExcite.GS, 1_000_000, 3))
    assert_close_to_samples(mul, a * s)
    gate = moments[node_of(qm, aten.hardsigmoid.default)]
    assert (gate.lo_cap, gate.hi_cap) == (0.0, 1.0)
    ranges = set_ranges_from_bn(qm, *IMAGENET)
    gated = [k for k in ranges if "hardsigmoid" in k]  # the gate's quantizer, where the rewrite places one
    for k in gated:
        assert 0.0 <= ranges[k][0] and ranges[k][1] <= 1.0 + 1e-6


def test_product_bounds_follow_from_the_factors_bounds():
    qm = qmodel(SqueezeExcite(F.hardswish))  # hardswish ≥ −0.375 times a gate in [0, 1]
    moments, wanted = propagate_moments(qm, *IMAGENET)
    mul = moments[node_of(qm, aten.mul.Tensor)]
    assert (mul.lo_cap, mul.hi_cap) == (-0.375, None)
    assert wanted["act_quant.mul"][0] >= -0.375


class PreActivation(nn.Module):
    """DenseNet's concat → BN → ReLU → Conv: the BN follows a concat, so it is not folded."""

    BA, GA = [0.3, -0.4], [1.0, 0.5]
    BB, GB = [1.0, 0.0, -1.0], [0.7, 1.3, 1.0]

    def __init__(self, legit: bool = False):
        super().__init__()
        self.a = conv_bn(3, 2, self.BA, self.GA)
        self.b = conv_bn(3, 3, self.BB, self.GB)
        self.bn = nn.BatchNorm2d(5)
        self.bn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.5, 0.0, -0.8]))
        self.bn.running_var.copy_(torch.tensor([1.5, 0.3, 0.6, 2.0, 1.0]))
        self.bn.weight.data.copy_(torch.tensor([1.2, -0.7, 0.9, 1.0, 0.4]))
        self.bn.bias.data.copy_(torch.tensor([0.1, 0.3, -0.2, 0.0, 0.5]))
        self.conv = nn.Conv2d(5, 4, 3, padding=1)
        self.legit = legit

    def pre(self, c):
        bn = self.bn
        if self.legit:  # the core-ATen form: a tuple, its output taken by getitem(…, 0)
            y = torch.ops.aten._native_batch_norm_legit_no_training.default(
                c, bn.weight, bn.bias, bn.running_mean, bn.running_var, 0.1, bn.eps)[0]
        else:
            y = bn(c)
        return F.relu(y)

    def forward(self, x):
        return self.conv(self.pre(torch.cat([self.a(x), self.b(x)], 1)))


@pytest.mark.parametrize("legit", [False, True], ids=["batch_norm", "native_batch_norm_legit"])
def test_standalone_batch_norm_after_concat_matches_monte_carlo(legit):
    model = PreActivation(legit)
    qm = qmodel(model)
    bn_targets = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
    assert any(n.target in bn_targets for n in qm.gm.graph.nodes), "the BN should be left unfolded"
    moments, _ = propagate_moments(qm, *IMAGENET)
    m = moments[node_of(qm, aten.relu.default)]
    c = torch.cat([gaussians(model.BA, model.GA, 250_000, 4), gaussians(model.BB, model.GB, 250_000, 5)], 1)
    with torch.no_grad():
        samples = model.double().pre(c)
    assert_close_to_samples(m, samples)
    ranges = set_ranges_from_bn(qm, *IMAGENET)
    assert all(math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in ranges.values())


class Shuffle(nn.Module):
    """ShuffleNetV2's channel shuffle (groups 2) then chunk, the halves taken by getitem."""

    def __init__(self, symbolic_batch: bool):
        super().__init__()
        self.stem = conv_bn(3, 8, torch.arange(8.0), 0.1 * (1 + torch.arange(8.0)))
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
        self.symbolic_batch = symbolic_batch

    def forward(self, x):
        x = self.stem(x)
        n = x.size(0) if self.symbolic_batch else 1
        _, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x1, x2 = x.chunk(2, dim=1)
        return torch.cat([x1, self.branch(x2)], 1)


@pytest.mark.parametrize("symbolic_batch", [True, False], ids=["symbolic_batch", "literal_batch_1"])
def test_channel_shuffle_tracks_the_channel_order_into_the_split(symbolic_batch):
    qm = qmodel(Shuffle(symbolic_batch), dynamic=symbolic_batch)
    moments, _ = propagate_moments(qm, *IMAGENET)
    parts = [n.name for n in qm.gm.graph.nodes if n.op == "call_function" and n.target is operator.getitem]
    first, second = moments[parts[0]], moments[parts[1]]
    # shuffling 8 channels in 2 groups orders them 0 4 1 5 2 6 3 7; the stem's β_c = c, γ_c = 0.1(c + 1)
    assert first.mean.flatten().tolist() == [0.0, 4.0, 1.0, 5.0]
    assert second.mean.flatten().tolist() == [2.0, 6.0, 3.0, 7.0]
    assert torch.allclose(second.var.flatten(), (0.1 * torch.tensor([3.0, 7.0, 4.0, 8.0])) ** 2)
    assert first.mean.shape == (4, 1, 1) and first.shape == (4, 8, 8)
    # inside the shuffle the moments are shaped like the tensor: (2, 4, 1, 1) → (4, 2, 1, 1)
    t = moments[node_of(qm, aten.transpose.int)]
    assert t.mean.shape == (4, 2, 1, 1) and t.mean[:, :, 0, 0].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    cat = moments[node_of(qm, aten.cat.default)]
    assert cat.mean.flatten()[:4].tolist() == [0.0, 4.0, 1.0, 5.0]


class Splits(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, torch.arange(8.0), torch.ones(8))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        a, b = torch.split(x, [3, 5], dim=1)
        c, d = b.split(2, dim=1)[:2]
        y = x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)
        return self.head(torch.cat([d, c, a, y[:, 7:]], 1))


def test_split_sizes_permute_and_slice_move_the_moments_like_the_values():
    qm = qmodel(Splits())
    moments, _ = propagate_moments(qm, *IMAGENET)
    cat = moments[node_of(qm, aten.cat.default)]
    assert cat.mean.flatten().tolist() == [5.0, 6.0, 3.0, 4.0, 0.0, 1.0, 2.0, 7.0]
    p = moments[node_of(qm, aten.permute.default)]
    assert p.mean.shape == (1, 1, 8) and p.shape == (8, 8, 8)


class Upsample(nn.Module):
    """LR-ASPP's bilinear upsampling of a gated branch added to a low-resolution classifier."""

    def __init__(self):
        super().__init__()
        self.high = conv_bn(3, 4, [0.5, -1.0, 2.0, 0.0], [1.0, 2.0, 0.5, 1.5])
        self.low = conv_bn(3, 4, [0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0])

    def forward(self, x):
        h = self.high(F.avg_pool2d(x, 2))
        up = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        near = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.low(x) + up + near


def test_upsampling_keeps_the_per_channel_moments():
    qm = qmodel(Upsample())
    moments, _ = propagate_moments(qm, *IMAGENET)
    beta, var = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.0, 4.0, 0.25, 2.25])
    for target in (aten.upsample_bilinear2d.vec, aten.upsample_nearest2d.vec):
        m = moments[node_of(qm, target)]
        assert m.shape == (4, 8, 8) and m.mean.shape == (4, 1, 1)
        assert torch.equal(m.mean.flatten(), beta) and torch.allclose(m.var.flatten(), var)
    out = moments[node_of(qm, aten.add.Tensor, 1)]
    assert torch.allclose(out.mean.flatten(), 2 * beta + torch.tensor([0.1, 0.2, 0.3, 0.4]))


class Arithmetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 2, [1.0, -2.0], [0.5, 2.0])
        self.b = conv_bn(3, 2, [3.0, 0.5], [1.0, 0.25])
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = (a - 1.0) * 2.0 / 4.0  # (a − 1)/2
        z = y - b
        return self.head(z.mean((2, 3), keepdim=True))


def test_sub_mul_div_by_numbers_and_difference_of_tensors():
    qm = qmodel(Arithmetic())
    moments, _ = propagate_moments(qm, *IMAGENET)
    y = moments[node_of(qm, aten.div.Tensor)]
    assert torch.allclose(y.mean.flatten(), torch.tensor([0.0, -1.5]))
    assert torch.allclose(y.var.flatten(), torch.tensor([0.0625, 1.0]))
    z = moments[node_of(qm, aten.sub.Tensor, 1)]  # independent: means subtract, variances add
    assert torch.allclose(z.mean.flatten(), torch.tensor([-3.0, -2.0]))
    assert torch.allclose(z.var.flatten(), torch.tensor([1.0625, 1.0625]))
    pooled = moments[node_of(qm, aten.mean.dim)]
    assert torch.equal(pooled.mean, z.mean) and pooled.mean.shape == (2, 1, 1)


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 2, [0.0, 0.0], [1.0, 1.0])
        self.b = conv_bn(3, 2, [1.0, 1.0], [1.0, 1.0])

    def forward(self, x):
        return self.a(x) / self.b(x)  # a ratio of Gaussians has no variance


def test_an_op_without_a_rule_raises_naming_the_node_and_the_op():
    qm = qmodel(Unsupported())
    with pytest.raises(UnsupportedModelError, match=r"minmax cannot propagate BN statistics through div.* "
                                                    r"\(aten\.div\.Tensor\)") as e:
        set_ranges_from_bn(qm, *IMAGENET)
    assert "bnstat" in str(e.value)


# ----------------------------------------------------------------------------- graphs minmax handled before
def _randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            bn.weight.data.copy_(torch.rand(c, generator=g) * 2 - 0.5)  # some γ < 0
            bn.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return module


class BnNet(nn.Module):
    """Every op minmax handled before the modern ops: each Conv has a BN, so the ranges come from
    the BN affines through ReLU/ReLU6/hardtanh/clamp, add (of tensors and of a number), slice and
    channel padding (option-A shortcut), concat, max/avg pooling and flatten."""

    def __init__(self):
        super().__init__()
        conv = lambda i, o, k=3, s=1: nn.Conv2d(i, o, k, s, k // 2, bias=False)  # noqa: E731
        self.c0, self.b0 = conv(3, 8), nn.BatchNorm2d(8)
        self.c1, self.b1 = conv(8, 16, s=2), nn.BatchNorm2d(16)
        self.c2, self.b2 = conv(16, 16), nn.BatchNorm2d(16)
        self.c3, self.b3 = conv(16, 8, 1), nn.BatchNorm2d(8)
        self.c4, self.b4 = conv(24, 12, 1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 2 * 2, 10)
        _randomize_bn(self, 1)

    def forward(self, x):
        x = F.relu6(self.b0(self.c0(x)))
        o = F.relu(self.b1(self.c1(x)))
        o = self.b2(self.c2(o))
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        x = F.relu(o + sc)
        y = F.hardtanh(self.b3(self.c3(x)), -1.0, 2.0) + 0.25
        y = torch.clamp(y, min=0.0, max=1.5)
        z = torch.cat([x, F.max_pool2d(y, 1)], 1)
        z = F.relu(self.b4(self.c4(z)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(z, 2), 1))


class NoBnNet(nn.Module):
    """Conv/Linear layers without BN: moments propagated through the weights."""

    def __init__(self):
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 6, 3, 1, 1), nn.BatchNorm2d(6)
        self.c1 = nn.Conv2d(6, 8, 3, 1, 1)
        self.c2 = nn.Conv2d(8, 8, 3, 2, 1, groups=4)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 20), nn.Linear(20, 5)
        _randomize_bn(self, 2)

    def forward(self, x):
        x = F.relu(self.b0(self.c0(x)))
        x = F.relu(self.c2(F.relu6(self.c1(x))))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


#: set_ranges_from_bn of the code before the modern-op rules (HEAD 258c0fe), W4A4, ImageNet mean/std,
#: models built under torch.manual_seed(0); the project promises byte-identical exports, so these
#: must not move by one bit
CAPTURED_BNNET = {
    'act_quant.input': (0.0, 255.0), 'act_quant.c0': (0.0, 4.318349361419678),
    'act_quant.c1': (0.0, 2.947971671819687), 'act_quant.c2': (-6.177827835083008, 5.405599355697632),
    'act_quant.relu_1': (0.0, 5.445710867643356), 'act_quant.c3': (-5.511572241783142, 2.0042080879211426),
    'act_quant.clamp': (0.0, 1.5000000223517418), 'act_quant.cat': (0.0, 5.445710867643356),
    'act_quant.c4': (0.0, 4.134504050016403), 'act_quant.adaptive_avg_pool2d': (0.0, 4.134503994137049)}
CAPTURED_NOBNNET = {
    'act_quant.input': (0.0, 255.0), 'act_quant.c0': (0.0, 4.508688747882843),
    'act_quant.c1': (0.0, 1.7676283791661263), 'act_quant.c2': (0.0, 0.7053367048501968),
    'act_quant.fc1': (0.0, 0.25954421202186495)}
#: sha256 of repr(sorted(ranges.items())) over all quantizers of the real checkpoints (W4A4)
CAPTURED_REAL = {
    "resnet20": (30, "a33d116684e993cb79b4d3175882993dd34fee78d1bd85dc439b4d2028f77de0",
                 {'act_quant.conv1': (0.0, 3.4897660464048386),
                  'act_quant.layer1_0_conv2': (-2.4503141343593597, 2.800359010696411),
                  'act_quant.adaptive_avg_pool2d': (0.0, 6.230294359847903)}),
    "mobilenet_v2": (64, "720d39eefb2fd6cfc486475e0127af0beb81c35ce3c3d743726398e1842bdd5c",
                     {'act_quant.features_0_0': (0.0, 2.141278311610222),
                      'act_quant.features_1_conv_1': (-2.949069023132324, 2.5804353952407837),
                      'act_quant.adaptive_avg_pool2d': (0.0, 5.229795221239328)}),
}


def _seeded(cls):
    torch.manual_seed(0)
    return quantize_graph(export(cls()), QuantScheme.from_bits(4))


def test_ranges_of_bn_only_graphs_are_the_captured_numbers_bit_for_bit():
    assert set_ranges_from_bn(_seeded(BnNet), *IMAGENET) == CAPTURED_BNNET


def test_ranges_through_layers_without_bn_are_the_captured_numbers():
    # F.conv2d / matmul of the moments: exact on this machine (checked when the rules were added),
    # approx here so that another CPU's kernel (a different summation order) does not fail it
    got = set_ranges_from_bn(_seeded(NoBnNet), *IMAGENET)
    assert got.keys() == CAPTURED_NOBNNET.keys()
    for k, v in CAPTURED_NOBNNET.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k


def test_ranges_are_deterministic():
    a, b = _seeded(BnNet), _seeded(BnNet)
    assert set_ranges_from_bn(a, *IMAGENET) == set_ranges_from_bn(b, *IMAGENET)
    for (n, qa), (_, qb) in zip(a.act_quantizers().items(), b.act_quantizers().items()):
        assert torch.equal(qa.scale, qb.scale) and torch.equal(qa.zero_point, qb.zero_point), n


@pytest.mark.parametrize("arch, path", [("resnet20", RESNET20),
                                        pytest.param("mobilenet_v2", MOBILENET_V2, marks=pytest.mark.slow)])
def test_real_checkpoints_keep_their_captured_ranges(arch, path):
    need(path)
    from toolchain.models.loader import load_model
    lm = load_model(path, arch=arch)
    ranges = set_ranges_from_bn(quantize_graph(lm.program, QuantScheme.from_bits(4)), lm.meta.mean, lm.meta.std)
    # to float32 rounding: BN folding and the load run torch kernels whose summation order differs
    # between CPUs (captured on an AVX512 Xeon; an AVX2-only EPYC differs in the 7th digit)
    count, _digest_on_capture_machine, some = CAPTURED_REAL[arch]
    for k, v in some.items():
        assert ranges[k] == pytest.approx(v, rel=1e-6), k
    assert len(ranges) == count


# ----------------------------------------------------------------------------- the real archives
@pytest.mark.parametrize("name", ARCHIVES)
def test_real_architecture_archives_get_finite_ranges(name):
    path = ARCH_DIR / f"{name}.pt2"
    need(path)
    qm = quantize_graph(torch.export.load(str(path)), QuantScheme.from_bits(8))
    ranges = set_ranges_from_bn(qm, *IMAGENET)
    assert ranges.keys() == qm.act_quantizers().keys()
    for k, (lo, hi) in ranges.items():
        assert math.isfinite(lo) and math.isfinite(hi) and lo < hi, (k, lo, hi)
