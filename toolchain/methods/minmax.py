"""``minmax``: the naive data-free baseline — no inputs at all.

Weights: per-channel max|w| (already set by the rewrite). Activations: ranges derived
from BN statistics alone by moment propagation (:mod:`toolchain.quant.bn_ranges`);
the network input gets the exact range of normalized pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..quant.bn_ranges import set_ranges_from_bn
from ..quant.calibrate import set_input_range
from .config import setting
from .registry import Method, MethodContext, register_method


@register_method("minmax")
class MinMax(Method):
    # layers without BN get moments propagated through their weights; no BN is needed
    needs_batchnorm = False

    @dataclass(frozen=True)
    class Config(Method.Config):
        """Attributes:
            num_std: half-width of each channel's range in standard deviations (k in μ ± kσ; > 0).
        """

        num_std: float = setting(4.0, gt=0)

    def run(self, ctx: MethodContext):
        set_ranges_from_bn(ctx.qmodel, ctx.meta.mean, ctx.meta.std, self.config.num_std)
        ctx.log["input_range"] = set_input_range(ctx.qmodel, ctx.meta.mean, ctx.meta.std)
        return ctx.qmodel
