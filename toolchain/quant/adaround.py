"""Learned rounding of weights (AdaRound, Nagel et al., ICML 2020) and an MSE weight-scale search.

AdaRound replaces round-to-nearest by a learned choice between rounding each weight down or up:
``w̃ = s · clamp(⌊w/s⌋ + h(α), qmin, qmax)`` with the rectified sigmoid
``h(α) = clamp(σ(α)·(ζ − γ) + γ, 0, 1)``, ζ = 1.1, γ = −0.1 (sec. 4.1, eq. 22–23), and the
regularizer ``f_reg = Σ 1 − |2h(α) − 1|^β`` (eq. 24) that drives every ``h`` to 0 or 1 while β is
annealed from high to low. ``α`` starts where ``h(α)`` equals the fractional part of ``w/s``
(the soft weight then equals the float weight inside the grid).

After reconstruction :func:`bake` writes the chosen codes back as the layer's float weight
(``codes · s``) and puts the layer's plain quantizer back, so round-to-nearest of the baked weight
gives exactly the learned codes: export and the integer-exact simulation read them unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .fake_quant import channel_view, fake_quantize
from .layers import QuantLayer
from .quantizers import MIN_SCALE, IntWeightPerChannelFloat

#: stretch of the rectified sigmoid (AdaRound, eq. 23)
ZETA, GAMMA = 1.1, -0.1


class AdaRoundWeightQuant(IntWeightPerChannelFloat):
    """A per-channel weight quantizer whose rounding direction is learned (AdaRound).

    Built from a layer's quantizer (same spec and scales; the scales stay fixed) and the layer's
    weight, which must not change while it is in use (its ``⌊w/s⌋`` is stored).

    Args:
        base: the layer's :class:`IntWeightPerChannelFloat` (its scale is copied, not shared).
        weight: (Cout, ...) float32, the layer's weight.

    Attributes:
        alpha: (same shape as ``weight``) the trainable rounding logits.
        soft: True — rounding ``h(α)`` in [0, 1] (training); False — hard ``α ≥ 0`` (evaluation).
    """

    def __init__(self, base: IntWeightPerChannelFloat, weight: torch.Tensor):
        super().__init__(base.bits, base.scale.numel(), axis=base.axis)
        with torch.no_grad():
            self.scale.copy_(base.scale)
            x = weight.detach() / self._view(self.effective_scale(), weight.ndim)
            floor = torch.floor(x)
            rest = (x - floor).clamp(1e-6, 1 - 1e-6)
        self.register_buffer("floor", floor)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.soft = True

    def rounding(self) -> torch.Tensor:
        """``h(α)`` (soft) or ``1[α ≥ 0]`` (hard), same shape as the weight, float32."""
        if self.soft:
            return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)
        return (self.alpha >= 0).float()

    def codes(self) -> torch.Tensor:
        """The integer codes (float32 holding integers) of the hard rounding, clamped to [qmin, qmax]."""
        return torch.clamp(self.floor + (self.alpha >= 0).float(), self.qmin, self.qmax).detach()

    def regularizer(self, beta: float) -> torch.Tensor:
        """``Σ 1 − |2h(α) − 1|^β`` (AdaRound, eq. 24), a scalar."""
        h = torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)
        return (1 - (2 * h - 1).abs().pow(beta)).sum()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return weight
        s = self._view(self.effective_scale(), self.floor.ndim)
        return torch.clamp(self.floor + self.rounding(), self.qmin, self.qmax) * s


def attach(layer: QuantLayer) -> AdaRoundWeightQuant:
    """Give ``layer`` an :class:`AdaRoundWeightQuant` (its plain quantizer kept for :func:`bake`)."""
    base = layer.weight_quant
    if not isinstance(base, IntWeightPerChannelFloat) or isinstance(base, AdaRoundWeightQuant):
        raise TypeError(f"AdaRound needs a plain per-channel weight quantizer, got {type(base).__name__}")
    ada = AdaRoundWeightQuant(base, layer.weight).to(layer.weight.device)
    ada.set_mode(base.mode)
    object.__setattr__(layer, "_plain_weight_quant", base)
    layer.weight_quant = ada
    return ada


@torch.no_grad()
def bake(layer: QuantLayer) -> torch.Tensor:
    """Write the learned codes into ``layer.weight`` (``codes · s``) and restore its plain quantizer.

    Returns:
        The (Cout, ...) int8 codes; ``layer.weight_quant.int_repr(layer.weight)`` equals them.
    """
    ada = layer.weight_quant
    if not isinstance(ada, AdaRoundWeightQuant):
        raise TypeError("bake() needs a layer with an AdaRound quantizer (attach() first)")
    base = layer.__dict__.pop("_plain_weight_quant")
    codes = ada.codes()
    base.scale.copy_(ada.scale)
    layer.weight.copy_(codes * channel_view(base.effective_scale(), codes.ndim, base.axis))
    layer.weight_quant = base
    return codes.to(torch.int8)


@torch.no_grad()
def mse_weight_scale(quantizer: IntWeightPerChannelFloat, weight: torch.Tensor, *, p: float = 2.4,
                     grid: int = 80, min_ratio: float = 0.2) -> torch.Tensor:
    """Set each channel's scale to the clipped min-max scale that minimises ``Σ |w − q(w)|^p``.

    The search of BRECQ's reference code (Li et al., ICLR 2021; p = 2.4, clipping ratios
    1.0, 0.99, …): ``grid`` ratios from 1 down to ``min_ratio`` of the channel's ``max|w|``,
    the best per channel.

    Args:
        quantizer: the layer's weight quantizer (modified in place).
        weight: (Cout, ...) float32.

    Returns:
        (Cout,) float32: the chosen clipping ratio per channel.
    """
    axis = quantizer.axis
    dims = [d for d in range(weight.ndim) if d != axis]
    amax = weight.abs().amax(dim=dims).clamp_min(MIN_SCALE * quantizer.qmax)
    best_err = torch.full_like(amax, float("inf"))
    best_ratio = torch.ones_like(amax)
    for ratio in torch.linspace(1.0, min_ratio, grid).tolist():
        s = channel_view(amax * ratio / quantizer.qmax, weight.ndim, axis)
        err = (weight - fake_quantize(weight, s, torch.zeros_like(s), quantizer.qmin, quantizer.qmax)
               ).abs().pow(p).sum(dim=dims)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    quantizer.scale.copy_((amax * best_ratio / quantizer.qmax).clamp_min(MIN_SCALE))
    return best_ratio
