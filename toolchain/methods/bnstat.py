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

from ..errors import ConfigError
from ..quant.calibrate import CALIBRATIONS, calibrate, set_input_range
from .bn_stats import teacher_with_bn_taps
from .registry import Method, MethodContext, register_method
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

    @dataclass(frozen=True)
    class Config:
        """Attributes: the synthesis settings (see SynthesisConfig) and
            calibration: "minmax", "mse" or "percentile".
        """

        num_images: int = 256
        batch_size: int = 64
        iterations: int = 200
        lr: float = 0.2
        clamp_to_pixels: bool = True
        calibration: str = "mse"

        def __post_init__(self):
            if self.calibration not in CALIBRATIONS:
                raise ConfigError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")

    def run(self, ctx: MethodContext):
        c = self.config
        synth = SynthesisConfig(num_images=c.num_images, batch_size=c.batch_size, iterations=c.iterations,
                                lr=c.lr, bn_loss="l2", clamp_to_pixels=c.clamp_to_pixels)
        images = synthetic_set(ctx, synth)
        ctx.log["ranges"] = {k: list(v) for k, v in calibrate_on(ctx, images, c.calibration, c.batch_size).items()}
        return ctx.qmodel
