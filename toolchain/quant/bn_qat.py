"""Batch norm during quantization-aware training, folded for deployment (``bn_mode = "qat"``).

The deployable model has every BN folded into the Conv before it (:mod:`.fold`): its weights are
no longer scale-free, which is why a student trained with the published SGD (lr 0.1) collapses
(issue 18). Jacob et al. (CVPR 2018, sec. 3.2) and Krishnamoorthi (2018, sec. 3.2, "batch
normalization folding with correction and freezing") train with the BN *in the loop*: the
quantized conv output is normalized with the batch's statistics while the running statistics
update, and after a share of the schedule BN is frozen — from then on the layer computes what the
folded integer model computes, and the model is exported folded with the final running statistics.

Here this is done in the folded layer's own coordinates, which needs nothing the rewrite did not
keep. For a layer ``z = conv(x, q(W'))`` whose ``W'`` was folded with the FP BN (γ, β, μ, σ),
``u = conv(x, W) · γ/σ`` has running mean ``γμ/σ`` and running std ``|γ|``, so the FP BN in
training mode is ``|γ| · (z − μ_B(z)) / σ_B(z) + β`` — a BN on ``z`` with weight ``|γ|`` (the
layer's ``bn_std`` buffer) and bias ``β`` (``bn_mean``), running mean ``β − b'`` and running
variance ``γ² − ε`` at the start, so that at the start it computes exactly the folded layer.

With running statistics (m, v) the folded deploy layer is ``W_dep = r · W'``, ``b_dep = β − r·m``,
``r = |γ|/√(v + ε)`` per output channel. The weight grid is per channel and symmetric, so
``q_{r·s}(r · W') = r · q_s(W')``: the integer codes are the ones trained, only the per-channel
scale becomes ``r · s`` (the same as torch.ao's approximate ConvBn QAT with a per-channel observer
on the running-folded weight). So:

- **before the freeze** (training mode): ``y = BN_batch(conv(x, q_s(W')))`` — the batch statistics
  normalize, the running ones update with ``momentum``;
- **frozen**, and in eval mode at any time: ``y = conv(x, r·q_s(W')) + q_int32(β − r·m)`` with the
  bias on the grid ``s_in · r · s`` — exactly the deploy computation;
- :func:`fold_bn_qat` writes ``r·W'``, ``r·s`` and ``β − r·m`` into the layer and detaches the BN:
  what was trained is what is exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fake_quant import channel_view, fake_quantize
from .layers import INT32_MAX, INT32_MIN, QuantLayer


class BatchNormQAT(nn.Module):
    """The BN of one folded layer during training (see the module docstring).

    Args:
        layer: a layer carrying ``bn_mean`` (β) and ``bn_std`` (|γ|) buffers (its BN was folded).
        momentum: the running statistics' update rate (PyTorch's convention, 0.1 by default).
        eps: the variance epsilon.

    Attributes:
        weight, bias: (C,) float32 parameters, |γ| and β (trained with the layer's weights).
        running_mean, running_var: (C,) float32 buffers, the statistics of ``conv(x, q_s(W'))``.
        frozen: () bool buffer; True: the deploy form, running statistics no longer update.
    """

    def __init__(self, layer: QuantLayer, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if not hasattr(layer, "bn_std"):
            raise ValueError("BatchNormQAT needs a layer whose BN was folded (bn_mean/bn_std buffers)")
        gamma = layer.bn_std.detach().float().clamp_min(2 * eps ** 0.5)
        beta = layer.bn_mean.detach().float()
        self.momentum, self.eps = float(momentum), float(eps)
        self.weight = nn.Parameter(gamma.clone())
        self.bias = nn.Parameter(beta.clone())
        self.register_buffer("running_mean", (beta - layer.bias.detach().float()).clone())
        self.register_buffer("running_var", gamma.pow(2) - eps)
        self.register_buffer("frozen", torch.tensor(False))

    def fold_factor(self) -> torch.Tensor:
        """``r = |γ| / √(v + ε)``, (C,) float32: the per-channel factor of the folded deploy weight."""
        return self.weight / torch.sqrt(self.running_var + self.eps)

    def deploy_bias(self) -> torch.Tensor:
        """``β − r·m``, (C,) float32: the folded deploy bias."""
        return self.bias - self.fold_factor() * self.running_mean

    def forward(self, layer: QuantLayer, z: torch.Tensor) -> torch.Tensor:
        """``z = conv(x, q_s(W'))`` without bias, (N, C, ...) float32 → the layer's output."""
        if self.training and not bool(self.frozen):
            return F.batch_norm(z, self.running_mean, self.running_var, self.weight, self.bias,
                                training=True, momentum=self.momentum, eps=self.eps)
        r = self.fold_factor()
        b = self.deploy_bias()
        s = layer.bias_scale()
        if s is not None:
            s = s * r
            b = fake_quantize(b, s, torch.zeros_like(s), INT32_MIN, INT32_MAX)
        view = [1, -1] + [1] * (z.ndim - 2)
        return z * r.reshape(view) + b.reshape(view)


def attach_bn_qat(layers: dict[str, QuantLayer], momentum: float = 0.1) -> list[str]:
    """Give every layer whose BN was folded a :class:`BatchNormQAT` (``layer.bn_qat``).

    Args:
        layers: name → layer (``QuantizedModel.layers()``).
        momentum: the running statistics' update rate.

    Returns:
        The names of the layers that got one (layers without a folded BN are left as they are).
    """
    names = []
    for name, layer in layers.items():
        if hasattr(layer, "bn_std") and getattr(layer, "bn_qat", None) is None:
            layer.bn_qat = BatchNormQAT(layer, momentum).train(layer.training)
            names.append(name)
    return names


def freeze_bn_qat(layers: dict[str, QuantLayer], frozen: bool = True) -> None:
    """Switch every attached BN to its deploy form (Krishnamoorthi 2018, sec. 3.2: BN freezing)."""
    for layer in layers.values():
        if getattr(layer, "bn_qat", None) is not None:
            layer.bn_qat.frozen.fill_(frozen)


@torch.no_grad()
def fold_bn_qat(layers: dict[str, QuantLayer]) -> int:
    """Fold every attached BN into its layer with the running statistics and detach it.

    Writes ``weight ← r·W'``, the weight scale ``← r·s`` and ``bias ← β − r·m`` (see the module
    docstring); afterwards the layer computes in eval mode what it computed with the BN attached.

    Returns:
        The number of layers folded.
    """
    count = 0
    for layer in layers.values():
        bn = getattr(layer, "bn_qat", None)
        if bn is None:
            continue
        r = bn.fold_factor().detach()
        layer.weight.mul_(channel_view(r, layer.weight.ndim, layer.weight_quant.axis))
        layer.weight_quant.scale.mul_(r)
        layer.bias.copy_(bn.deploy_bias().detach())
        layer.bn_qat = None
        count += 1
    return count
