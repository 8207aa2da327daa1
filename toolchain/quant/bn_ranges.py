"""Activation ranges from BN statistics alone — no inputs at all (the naive data-free baseline).

Each channel of a BN output is modelled as a Gaussian N(β_c, γ_c²) (the BN affine
parameters are the output's mean and standard deviation when the running statistics
hold). These per-channel moments are propagated through the rest of the graph under an
independence assumption:

- Conv/Linear without BN: mean W·μ + b, variance W²·σ² (summed over the receptive field);
- ReLU: moments of the rectified Gaussian (closed form); ReLU6/clamp: the same, capped;
- Add: means and variances add; Concat/slice/pad: the channels are concatenated/sliced/padded;
- pooling and reshapes keep the per-channel moments;
- the network input: pixels uniform on [0, 1], normalized by the model card's mean/std.

A quantizer's range is [min_c(μ_c − k·σ_c), max_c(μ_c + k·σ_c)] with k = ``num_std``,
clipped to the activation's bounds (≥ 0 after ReLU, ≤ 6 after ReLU6).
This is the "minmax" method's activation calibration (ZeroQ, Cai et al. CVPR 2020,
sec. 3, describes the failure mode it suffers from: ranges from BN parameters alone
ignore the input distribution beyond the first two moments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from ..errors import UnsupportedModelError
from . import ops
from .layers import QuantConv2d, QuantLinear
from .model import QuantizedModel
from .quantizers import _ActPerTensorFloat


@dataclass
class Moments:
    """Per-channel mean and variance, float32 (C,). ``hi_cap``: an upper clamp seen on the way."""

    mean: torch.Tensor
    var: torch.Tensor
    hi_cap: float | None = None


_SQRT2 = math.sqrt(2.0)


def _relu_moments(m: Moments) -> Moments:
    mu, sd = m.mean, m.var.clamp_min(1e-12).sqrt()
    a = mu / sd
    cdf = 0.5 * (1 + torch.erf(a / _SQRT2))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    mean = mu * cdf + sd * pdf
    ex2 = (mu * mu + sd * sd) * cdf + mu * sd * pdf
    return Moments(mean, (ex2 - mean * mean).clamp_min(0.0))


def _reshape_moments(m: Moments, node: fx.Node) -> Moments:
    """Flattening (N, C, H, W) into (N, C·H·W) repeats each channel's moments H·W times (C-major)."""
    val = node.meta.get("val")
    if val is None or len(val.shape) < 2:
        return m
    features = 1
    for d in val.shape[1:]:
        features *= int(d)
    c = m.mean.numel()
    if features == c or features % c:
        return m
    r = features // c
    return Moments(m.mean.repeat_interleave(r), m.var.repeat_interleave(r), m.hi_cap)


class _Propagator(fx.Interpreter):
    def __init__(self, qmodel: QuantizedModel, input_moments: Moments, num_std: float):
        super().__init__(qmodel.gm)
        self.input_moments = input_moments
        self.num_std = num_std
        self.ranges: dict[str, tuple[float, float]] = {}

    def run_node(self, n):
        self._node = n
        return super().run_node(n)

    def placeholder(self, target, args, kwargs):
        return self.input_moments

    def call_module(self, target, args, kwargs):
        mod = self.module.get_submodule(target)
        m = args[0]
        if isinstance(mod, _ActPerTensorFloat):
            sd = m.var.clamp_min(0).sqrt()
            lo = float((m.mean - self.num_std * sd).min())
            hi = float((m.mean + self.num_std * sd).max())
            if m.hi_cap is not None:
                hi = min(hi, m.hi_cap)
            if target != "act_quant.input":  # the input's range is exact (set_input_range)
                mod.set_range(lo, hi)
            self.ranges[target] = mod.range()
            return m
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            if hasattr(mod, "bn_mean"):
                return Moments(mod.bn_mean.clone(), mod.bn_std.clone() ** 2)
            w = mod.weight.detach()
            if isinstance(mod, QuantLinear):
                return Moments(w @ m.mean + mod.bias.detach(), (w * w) @ m.var)
            k = w.shape[2:]
            ones = torch.ones(1, m.mean.numel(), *k)
            mean = F.conv2d(ones * m.mean.view(1, -1, 1, 1), w, mod.bias.detach(), groups=mod.groups)
            var = F.conv2d(ones * m.var.view(1, -1, 1, 1), w * w, groups=mod.groups)
            return Moments(mean.flatten(), var.flatten())
        raise UnsupportedModelError(f"minmax cannot propagate BN statistics through module {target}",
                                    "use --method bnstat (calibration on synthetic data)")

    def call_function(self, target, args, kwargs):
        node = self._node
        if target in ops.RELU:
            return _relu_moments(args[0])
        if target in ops.ACTIVATION:  # ReLU6 / hardtanh / clamp
            lo, hi = ops.clamp_bounds(node)
            m = _relu_moments(args[0]) if lo is not None and lo >= 0 else args[0]
            return Moments(m.mean if hi is None else m.mean.clamp(max=hi), m.var, hi)
        if target in ops.ADD:
            a, b = args[0], args[1]
            if not isinstance(b, Moments):
                return Moments(a.mean + float(b), a.var)
            return Moments(a.mean + b.mean, a.var + b.var)
        if target in ops.CAT:
            parts = args[0]
            return Moments(torch.cat([p.mean for p in parts]), torch.cat([p.var for p in parts]))
        if target in ops.AVG_POOL or target in ops.MAX_POOL:
            return args[0]
        if target in ops.RESHAPE:
            return _reshape_moments(args[0], node)
        if target in ops.SLICE:
            m, dim = args[0], args[1] if len(args) > 1 else 0
            if dim != 1:
                return m
            start = args[2] if len(args) > 2 and args[2] is not None else 0
            end = args[3] if len(args) > 3 and args[3] is not None else m.mean.numel()
            step = args[4] if len(args) > 4 else 1
            return Moments(m.mean[start:end:step], m.var[start:end:step], m.hi_cap)
        if target in ops.PAD and ops.is_zero_pad(node):
            m, pad = args[0], list(args[1])
            if len(pad) >= 6:
                before, after = pad[4], pad[5]
                z = lambda n: torch.zeros(n)
                return Moments(torch.cat([z(before), m.mean, z(after)]),
                               torch.cat([z(before), m.var, z(after)]), m.hi_cap)
            return m
        if target is ops.aten.sym_size.int:
            return 1
        raise UnsupportedModelError(
            f"minmax cannot propagate BN statistics through {node.name} ({target})",
            "use --method bnstat (calibration on synthetic data)")


@torch.no_grad()
def set_ranges_from_bn(qmodel: QuantizedModel, mean, std, num_std: float = 4.0) -> dict[str, tuple]:
    """Set every activation quantizer's range from BN statistics (see module docstring).

    Args:
        qmodel: the quantized model; its layers carry the folded BNs' β and |γ|.
        mean, std: the model card's input normalization (length C).
        num_std: k, the half-width of each channel's range in standard deviations.

    Returns:
        quantizer name → (lo, hi) range set.

    Raises:
        UnsupportedModelError: an op the propagation has no rule for.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    inp = Moments((0.5 - mean_t) / std_t, (1.0 / 12.0) / std_t ** 2)
    prop = _Propagator(qmodel, inp, num_std)
    with qmodel.float_mode():
        prop.run(inp)
    return prop.ranges
