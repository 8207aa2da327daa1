"""``bnstat``: ZeroQ-style calibration (Cai et al., CVPR 2020) — the data-free calibration baseline.

1. Distill a synthetic calibration set whose BN batch statistics match the FP model's
   running statistics (:func:`~.synthesis.distill_images`); cached, reused across bit widths.
2. Calibrate every activation quantizer on it (min-max, MSE-optimal or percentile);
   the network input gets the exact range of normalized pixels.
No fine-tuning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..quant.calibrate import CALIBRATIONS, calibrate, set_input_range
from .bn_stats import teacher_with_bn_taps
from .config import group, setting
from .registry import Method, MethodContext, register_method
from .schedule import Phase, synthesis_phase
from .synthesis import SynthesisConfig, distill_images


def synthetic_set(ctx: MethodContext, cfg: SynthesisConfig) -> torch.Tensor:
    """The cached synthetic set for ``cfg`` (built on first use): (N, C, H, W) float32 CPU."""
    def build():
        teacher, bn = teacher_with_bn_taps(ctx)
        steps = cfg.iterations * -(-cfg.num_images // cfg.batch_size)
        task = ctx.progress("synthesizing calibration images", steps)
        try:
            return distill_images(teacher, bn, ctx.input_shape, ctx.meta.mean, ctx.meta.std, cfg,
                                  ctx.device, task)
        finally:
            task.close()
    return ctx.cached("synth", dataclasses.asdict(cfg), build)


def calibrate_on(ctx: MethodContext, images: torch.Tensor, method: str, batch_size: int) -> dict:
    """Exact input range, then activation calibration on ``images`` (batches of ``batch_size``)."""
    input_range = set_input_range(ctx.qmodel, ctx.meta.mean, ctx.meta.std)
    batches = [images[i:i + batch_size].to(ctx.device) for i in range(0, len(images), batch_size)]
    task = ctx.progress("calibrating activation ranges", len(batches))
    try:
        ranges = calibrate(ctx.qmodel, batches, method,
                           skip=["act_quant.input"] if input_range else (), progress=task.advance)
    finally:
        task.close()
    return ranges


@register_method("bnstat")
class BNStat(Method):
    needs_batchnorm = True
    synthesizes_calibration_images = True

    @dataclass(frozen=True)
    class Config(Method.Config):
        """Attributes:
            synthesis: the synthetic set (:class:`~.synthesis.SynthesisConfig`; ZeroQ's "l2" BN loss);
                its ``batch_size`` also batches the calibration.
            calibration: "minmax", "mse" or "percentile".
        """

        synthesis: SynthesisConfig = group(SynthesisConfig)
        calibration: str = setting("mse", choices=CALIBRATIONS)

    def phases(self, scheme, is_cached) -> list[Phase]:
        s = self.config.synthesis
        return [synthesis_phase("synthesis", s, is_cached("synth", dataclasses.asdict(s)), self.synthesis_cost)] + \
            super().phases(scheme, is_cached)

    def run(self, ctx: MethodContext):
        c = self.config
        images = self.calibration_images = synthetic_set(ctx, c.synthesis)
        ranges = calibrate_on(ctx, images, c.calibration, c.synthesis.batch_size)
        ctx.log["ranges"] = {k: list(v) for k, v in ranges.items()}
        return ctx.qmodel
