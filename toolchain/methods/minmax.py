"""``minmax``: the naive data-free baseline — no inputs at all.

Weights: per-channel max|w| (already set by the rewrite). Activations: ranges derived
from BN statistics alone by moment propagation (:mod:`toolchain.quant.bn_ranges`);
the network input gets the exact range of normalized pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..quant.bn_ranges import set_ranges_from_bn
from ..quant.calibrate import set_input_range
from .registry import Method, MethodContext, register_method


@register_method("minmax")
class MinMax(Method):
    # layers without BN get moments propagated through their weights; no BN is needed
    needs_batchnorm = False

    @dataclass(frozen=True)
    class Config:
        """Attributes:
            num_std: half-width of each channel's range in standard deviations (k in μ ± kσ).
        """

        num_std: float = 4.0

        def __post_init__(self):
            if self.num_std <= 0:
                raise ConfigError(f"num_std must be > 0, got {self.num_std}")

    def run(self, ctx: MethodContext):
        set_ranges_from_bn(ctx.qmodel, ctx.meta.mean, ctx.meta.std, self.config.num_std)
        ctx.log["input_range"] = set_input_range(ctx.qmodel, ctx.meta.mean, ctx.meta.std)
        return ctx.qmodel
