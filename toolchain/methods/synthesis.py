"""Synthetic calibration images distilled from BN statistics (ZeroQ, Cai et al., CVPR 2020, sec. 3.1).

Inputs start as N(0, 1) noise in the model's normalized input space and are optimized
with Adam so that every BN layer's batch statistics match its running statistics
(:class:`~.bn_stats.BNStatistics`). Optionally (default) they are kept inside the range
that real normalized pixels can take, so the input quantizer's exact range holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bn_stats import BN_LOSSES, BNStatistics
from .config import Settings, setting
from .images import clamp_pixels, pixel_bounds


@dataclass(frozen=True)
class SynthesisConfig(Settings):
    """Hyperparameters of BN-statistics distillation (the ``synthesis`` group of a method's config).

    Attributes:
        num_images: size of the synthetic set (>= 1).
        batch_size: images optimized jointly (>= 2: BN statistics are batch statistics).
        iterations: Adam steps per batch (>= 1; ZeroQ: 500).
        lr: Adam learning rate (> 0; ZeroQ: 0.5).
        bn_loss: "l2" (ZeroQ) or "kl" (GZNQ's Gaussian KL), one of :data:`~.bn_stats.BN_LOSSES`.
        clamp_to_pixels: keep images within the normalized image of [0, 1] pixels.
    """

    num_images: int = setting(256, ge=1)
    batch_size: int = setting(64, ge=2)
    iterations: int = setting(200, ge=1)
    lr: float = setting(0.2, gt=0)
    bn_loss: str = setting("l2", choices=BN_LOSSES)
    clamp_to_pixels: bool = True


def match_bn_statistics(teacher: torch.nn.Module, bn: BNStatistics, x: torch.Tensor, iterations: int, lr: float,
                        bn_loss: str = "l2", bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
                        progress=None) -> torch.Tensor:
    """Optimize one batch of images so the teacher's BN batch statistics match its running ones
    (ZeroQ, Cai et al., CVPR 2020, eq. 2): Adam on the pixels, cosine learning-rate decay.

    Args:
        teacher: FP model with ``bn``'s taps inserted, eval mode, its parameters frozen
            (:meth:`~.registry.MethodContext.teacher_copy`).
        bn: the BN-statistics hooks of ``teacher``.
        x: (N, C, H, W) float32 starting images (N >= 2), normalized input space; not modified.
        iterations: Adam steps (>= 0; 0 returns the clamped start).
        lr: Adam learning rate.
        bn_loss: "l2" or "kl" (:meth:`~.bn_stats.BNStatistics.loss`, summed over the BN layers).
        bounds: (lo, hi), each (1, C, 1, 1): keep the images inside them (start and every step).
        progress: optional task with ``advance(n, loss=…)`` once per step.

    Returns:
        The optimized (N, C, H, W) float32 images, detached, on ``x``'s device.
    """
    x = clamp_pixels(x, bounds).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iterations, 1))
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        teacher(x)
        loss = bn.loss(bn_loss)
        loss.backward()
        opt.step()
        sched.step()
        if bounds is not None:
            with torch.no_grad():
                x.copy_(clamp_pixels(x, bounds))
        if progress is not None:
            progress.advance(1, loss=float(loss.detach()))
    return x.detach()


def distill_images(teacher: torch.nn.Module, bn: BNStatistics, input_shape, mean, std,
                   cfg: SynthesisConfig, device, progress=None) -> torch.Tensor:
    """A synthetic set optimized against the teacher's BN statistics from N(0, 1) noise, one batch
    at a time (:func:`match_bn_statistics`).

    Args:
        teacher: FP model with ``bn``'s taps inserted, eval mode, frozen, on ``device``.
        bn: the BN-statistics hooks of ``teacher``.
        input_shape: (C, H, W).
        mean, std: normalization of the model card (for ``clamp_to_pixels``).
        cfg: hyperparameters.
        progress: optional task with ``advance(n, **fields)``.

    Returns:
        (num_images, C, H, W) float32 tensor on the CPU, in the normalized input space.
    """
    bounds = pixel_bounds(mean, std, device) if cfg.clamp_to_pixels else None
    out = []
    remaining = cfg.num_images
    while remaining > 0:
        b = min(cfg.batch_size, remaining) if remaining >= 2 else 2
        x = match_bn_statistics(teacher, bn, torch.randn(b, *input_shape, device=device), cfg.iterations, cfg.lr,
                                cfg.bn_loss, bounds, progress)
        out.append(x.cpu()[: min(b, remaining)])
        remaining -= b
    return torch.cat(out)[: cfg.num_images]
