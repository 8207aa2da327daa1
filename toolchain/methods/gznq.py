"""``gznq``: Generative Zero-shot Network Quantization (He, Hu, Wang, Cheng; arXiv 2101.08430).

Synthetic calibration data as generative modeling of the distribution the FP model's BN
statistics capture, then calibration and (at low bit widths) distillation fine-tuning:

1. A *distribution* of images (:class:`ImageDistribution`): per image a learned mean m and
   log-variance v (both (N, C, H, W), normalized input space); each optimization step draws a
   fresh x = m + exp(v/2)·ε, ε ~ N(0, I) (the reparameterization trick). Each image has a
   target label, balanced over the classes (:func:`balanced_labels`).
2. m and v are optimized with Adam against
   ``bn_weight``·Σ_BN mean_c KL(N(μ̂_c, σ̂²_c) ‖ N(μ_c, σ²_c)) (:class:`~.bn_stats.BNStatistics`,
   ``bn_loss = "l2"`` is the ZeroQ ablation) + ``ce_weight``·CE(P(x̃), y) + ``tv_weight``·TV(x),
   where x̃ is x after the image priors (random jitter and horizontal flip).
   The result (m, v, labels) is a cached artifact keyed on these settings only, so every
   bit width reuses it (``zqtool synth`` writes it and a per-class PNG grid).
3. Every activation quantizer is calibrated on ``calib_draws`` fresh samples of every image
   (:func:`~.bnstat.calibrate_on`; the input gets the exact normalized-pixel range).
4. Optionally the quantized model is fine-tuned by distillation from the FP model on fresh
   samples of the distribution (:class:`~.distill.DistillLoop`, T²·KL on softened logits).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..quant.calibrate import CALIBRATIONS
from .augment import jitter_flip
from .bn_stats import BN_LOSSES, BNStatistics, teacher_with_bn_taps
from .bnstat import calibrate_on
from .checkpoint import Checkpointer
from .distill import OPTIMIZERS, DistillLoop, kd_objective, make_optimizer
from .registry import Method, MethodContext, register_method
from .student import set_learned_scales, student_param_groups
from .synthesis import pixel_bounds

FINETUNE_MODES = ("auto", "on", "off")


# ----------------------------------------------------------------------------- pieces
def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """(n,) int64 labels 0, 1, …, K−1, 0, 1, …: every class count is ⌊n/K⌋ or ⌈n/K⌉, and so is
    every prefix's, so each optimization batch is balanced too."""
    return torch.arange(n, dtype=torch.int64) % num_classes


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation of (N, C, H, W) images: mean |Δ_h x| + mean |Δ_w x| (scalar)."""
    tv = x.new_zeros(())
    if x.shape[-2] > 1:
        tv = tv + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    if x.shape[-1] > 1:
        tv = tv + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return tv


class ImageDistribution(nn.Module):
    """N images as diagonal Gaussians in the normalized input space.

    Args:
        mean: (N, C, H, W) float32, the learned per-image means m.
        logvar: (N, C, H, W) float32 log-variances v, or None for point images (the ablation).
        lo, hi: optional (1, C, 1, 1) bounds (normalized [0, 1] pixels) applied to samples.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor | None = None,
                 lo: torch.Tensor | None = None, hi: torch.Tensor | None = None):
        super().__init__()
        self.mean = nn.Parameter(mean.detach().clone().float())
        self.logvar = None if logvar is None else nn.Parameter(logvar.detach().clone().float())
        self.lo, self.hi = lo, hi

    def __len__(self) -> int:
        return self.mean.shape[0]

    def _clamp(self, x):
        return x if self.lo is None else torch.max(torch.min(x, self.hi), self.lo)

    def sample(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """A fresh draw x = m + exp(v/2)·ε of the images ``index`` (all by default), (n, C, H, W),
        differentiable in m and v, clamped to the bounds."""
        m = self.mean if index is None else self.mean[index]
        if self.logvar is None:
            return self._clamp(m)
        v = self.logvar if index is None else self.logvar[index]
        return self._clamp(m + torch.exp(0.5 * v) * torch.randn_like(m))

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the means inside the bounds (after an optimizer step)."""
        if self.lo is not None:
            self.mean.copy_(self._clamp(self.mean))

    def to_dict(self, labels: torch.Tensor) -> dict:
        """``{"mean", "logvar" (absent for point images), "labels"}``, CPU tensors (loads with weights_only)."""
        d = {"mean": self.mean.detach().cpu(), "labels": labels.cpu()}
        if self.logvar is not None:
            d["logvar"] = self.logvar.detach().cpu()
        return d

    @classmethod
    def from_dict(cls, d: dict, lo=None, hi=None) -> "ImageDistribution":
        return cls(d["mean"], d.get("logvar"), lo, hi)


@dataclass(frozen=True)
class GZNQSynthesisConfig:
    """The settings a synthetic distribution depends on (its cache key). See :class:`GZNQ.Config`."""

    num_images: int = 256
    batch_size: int = 64
    iterations: int = 250
    lr: float = 0.1
    bn_loss: str = "kl"
    bn_weight: float = 1.0
    ce_weight: float = 0.1
    tv_weight: float = 0.0
    jitter: int = 2
    flip: bool = True
    reparameterize: bool = True
    init_logvar: float = -4.0
    clamp_to_pixels: bool = True

    def __post_init__(self):
        if self.num_images < 1 or self.batch_size < 2 or self.iterations < 1 or self.lr <= 0:
            raise ConfigError("gznq synthesis needs num_images >= 1, batch_size >= 2, iterations >= 1, lr > 0")
        if self.bn_loss not in BN_LOSSES:
            raise ConfigError(f"bn_loss must be one of {BN_LOSSES}, got {self.bn_loss!r}")
        if min(self.bn_weight, self.ce_weight, self.tv_weight) < 0 or self.jitter < 0:
            raise ConfigError("bn_weight, ce_weight, tv_weight and jitter must be >= 0")


def synthesize_distribution(teacher: nn.Module, bn: BNStatistics, input_shape, mean, std, num_classes: int,
                            cfg: GZNQSynthesisConfig, device, progress=None,
                            checkpointer: Checkpointer | None = None) -> dict:
    """Learn the synthetic image distribution batch by batch (see the module docstring, step 2).

    Args:
        teacher: FP model with ``bn``'s taps inserted, eval mode, on ``device``.
        bn: the BN-statistics hooks of ``teacher``.
        input_shape: (C, H, W); mean, std: the model card's normalization.
        num_classes: K, for the balanced target labels.
        progress: optional task with ``advance(n, **fields)`` (one per step).
        checkpointer: saves the finished batches; a re-run resumes after the last one.

    Returns:
        ``{"mean": (N, C, H, W) float32, "logvar": (N, C, H, W) float32 (when reparameterized),
        "labels": (N,) int64}`` on the CPU.
    """
    lo, hi = pixel_bounds(mean, std, device) if cfg.clamp_to_pixels else (None, None)
    for p in teacher.parameters():
        p.requires_grad_(False)
    sizes, remaining = [], cfg.num_images
    while remaining > 0:
        sizes.append(max(min(cfg.batch_size, remaining), 2))
        remaining -= sizes[-1]
    labels = balanced_labels(sum(sizes), num_classes)
    ckpt = checkpointer or Checkpointer(None)
    state = ckpt.load() or {"done": []}
    done = list(state["done"])
    if progress is not None and done:
        progress.advance(len(done) * cfg.iterations)
    start = sum(sizes[:len(done)])
    for b in sizes[len(done):]:
        y = labels[start:start + b].to(device)
        m0 = torch.randn(b, *input_shape, device=device)
        dist = ImageDistribution(m0, torch.full_like(m0, cfg.init_logvar) if cfg.reparameterize else None,
                                 lo, hi).to(device)
        dist.project_()
        opt = torch.optim.Adam(dist.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)
        for _ in range(cfg.iterations):
            opt.zero_grad(set_to_none=True)
            x = dist.sample()
            logits = teacher(jitter_flip(x, cfg.jitter, cfg.flip))
            l_bn = bn.loss(cfg.bn_loss)
            l_ce = F.cross_entropy(logits, y)
            loss = cfg.bn_weight * l_bn + cfg.ce_weight * l_ce
            if cfg.tv_weight:
                loss = loss + cfg.tv_weight * total_variation(x)
            loss.backward()
            opt.step()
            sched.step()
            dist.project_()
            if progress is not None:
                progress.advance(1, bn=round(float(l_bn.detach()), 4), ce=round(float(l_ce.detach()), 4))
        done.append(dist.to_dict(y))
        start += b
        if len(done) < len(sizes):
            ckpt.save({"done": done})
    out = {k: torch.cat([d[k] for d in done])[: cfg.num_images] for k in done[0]}
    ckpt.clear()
    return out


def save_grid(images: torch.Tensor, labels: torch.Tensor, mean, std, path: str | Path, *,
              num_classes: int | None = None, per_class: int = 8, scale: int = 1, pad: int = 2) -> tuple[int, int]:
    """Write a PNG grid of synthetic images: row k holds the first ``per_class`` images of class k.

    Args:
        images: (N, C, H, W) float32 in the normalized input space (C = 1 or 3).
        labels: (N,) int64 class of each image.
        mean, std: the normalization to undo (pixels = x·std + mean, clipped to [0, 1]).
        num_classes: rows (default: max label + 1); missing cells stay black.
        scale: integer nearest-neighbour upscaling of each cell.
        pad: black pixels between and around cells.

    Returns:
        (width, height) of the written image in pixels:
        (per_class·(W·scale + pad) + pad, K·(H·scale + pad) + pad).
    """
    import numpy as np
    from PIL import Image
    c, h, w = images.shape[1:]
    k = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pix = (images.detach().cpu().float() * s + m).clamp(0, 1)
    if scale > 1:
        pix = pix.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    ch, cw = h * scale, w * scale
    canvas = np.zeros((k * (ch + pad) + pad, per_class * (cw + pad) + pad, c), dtype=np.uint8)
    for row in range(k):
        idx = (labels == row).nonzero().flatten()[:per_class]
        for col, i in enumerate(idx.tolist()):
            y0, x0 = pad + row * (ch + pad), pad + col * (cw + pad)
            canvas[y0:y0 + ch, x0:x0 + cw] = (pix[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return img.size


# ----------------------------------------------------------------------------- the method
@register_method("gznq")
class GZNQ(Method):
    """GZNQ (see the module docstring). The paper has no public code; only "BN statistics as
    a generative model of the data, a distribution rather than one Gaussian noise batch, the
    synthetic set as the calibration set" is confirmed (REFERENCES.md). Our reading, every
    unconfirmed choice a config field (``recipes/gznq.toml``; defaults in parentheses):

    - ``bn_loss`` ("kl"): per-BN-layer Gaussian KL(N(μ̂, σ̂²) ‖ N(μ, σ²)), mean over channels,
      summed over layers; "l2" is the ZeroQ baseline (ablation). ``bn_weight`` (1.0).
    - ``ce_weight`` (0.1): cross-entropy of the FP logits to a target label per image; labels
      balanced over the classes (cycling 0..K−1).
    - ``reparameterize`` (on): learned per-image mean and log-variance, a fresh sample per step;
      ``init_logvar`` (−4, σ ≈ 0.14 in normalized units); means start as N(0, 1) noise.
      Off: point images (the ablation).
    - Image priors: ``jitter`` (2 px random roll), ``flip`` (on), ``tv_weight`` (0: off).
    - ``clamp_to_pixels`` (on): samples and means kept in the normalized image of [0, 1] pixels.
    - Adam, ``lr`` (0.1) with cosine decay, ``iterations`` per batch of ``batch_size``.
    - ``calibration`` ("mse") on ``calib_draws`` (1) fresh samples of every learned image.
    - ``finetune`` ("auto": on when the weight or activation bit width is below
      ``finetune_below_bits`` (5), i.e. at ≤ 4 bits; "on"/"off" force it): distillation of the
      quantized model from the FP model on fresh samples, T²·KL at ``temperature`` (4)
      (+ ``ft_ce_weight`` (0)·CE to the target labels), ``ft_optimizer`` ("adam", ``ft_lr`` 1e-4, cosine
      decay), ``ft_steps`` × ``ft_batch_size``, jitter/flip priors
      on the fine-tuning batches too (``ft_augment``, on). Weights and biases are trained,
      quantizer scales stay as calibrated.
    - Synthesis checkpoints after every finished batch, fine-tuning every ``checkpoint_every``
      steps, into the run's work directory; a re-run resumes.
    """

    needs_batchnorm = True
    needs_class_logits = True

    @dataclass(frozen=True)
    class Config(GZNQSynthesisConfig):
        """Attributes: the synthesis settings inherited from :class:`GZNQSynthesisConfig`, then
            calibration, calib_draws: activation calibration on the synthetic distribution.
            finetune ("auto" | "on" | "off"; true/false accepted), finetune_below_bits.
            ft_steps, ft_batch_size, ft_optimizer ("sgd" | "adam"), ft_lr, ft_momentum,
            ft_weight_decay, temperature, ft_ce_weight, ft_augment: distillation fine-tuning.
            checkpoint_every, log_every: fine-tuning checkpoints and loss-curve entries (steps).
        """

        calibration: str = "mse"
        calib_draws: int = 1
        finetune: str = "auto"
        finetune_below_bits: int = 5
        ft_steps: int = 300
        ft_batch_size: int = 64
        ft_optimizer: str = "adam"
        ft_lr: float = 1e-4
        ft_momentum: float = 0.9
        ft_weight_decay: float = 0.0
        temperature: float = 4.0
        ft_ce_weight: float = 0.0
        ft_augment: bool = True
        learn_act_scales: bool = False
        learn_weight_scales: bool = False
        scale_lr_ratio: float = 1.0
        checkpoint_every: int = 50
        log_every: int = 10

        def __post_init__(self):
            f = str(self.finetune).lower()
            f = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}.get(f, f)
            if f not in FINETUNE_MODES:
                raise ConfigError(f"finetune must be one of {FINETUNE_MODES} (or true/false), got {self.finetune!r}")
            object.__setattr__(self, "finetune", f)
            GZNQSynthesisConfig.__post_init__(self)  # validates the synthesis settings
            if self.calibration not in CALIBRATIONS:
                raise ConfigError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
            if self.ft_optimizer not in OPTIMIZERS:
                raise ConfigError(f"ft_optimizer must be one of {OPTIMIZERS}, got {self.ft_optimizer!r}")
            if self.calib_draws < 1 or self.ft_steps < 0 or self.ft_batch_size < 1 or self.log_every < 1:
                raise ConfigError("gznq needs calib_draws >= 1, ft_steps >= 0, ft_batch_size >= 1, log_every >= 1")
            if self.ft_lr <= 0 or self.temperature <= 0 or self.checkpoint_every < 0:
                raise ConfigError("gznq needs ft_lr > 0, temperature > 0, checkpoint_every >= 0")
            if min(self.ft_momentum, self.ft_weight_decay, self.ft_ce_weight) < 0:
                raise ConfigError("ft_momentum, ft_weight_decay and ft_ce_weight must be >= 0")

        def synthesis(self) -> GZNQSynthesisConfig:
            names = {f.name for f in dataclasses.fields(GZNQSynthesisConfig)}
            return GZNQSynthesisConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def finetunes(self, ctx: MethodContext) -> bool:
        """Whether this run fine-tunes (``finetune`` resolved against the scheme's bit widths)."""
        c = self.config
        if c.finetune == "auto":
            return min(ctx.scheme.wbits, ctx.scheme.abits) < c.finetune_below_bits
        return c.finetune == "on"

    def synthesize(self, ctx: MethodContext) -> dict:
        """The cached synthetic distribution (built on first use; ``ctx.qmodel`` is not needed):
        ``{"mean", "logvar" (if reparameterized), "labels"}`` as in :func:`synthesize_distribution`."""
        cfg = self.config.synthesis()

        def build():
            teacher, bn = teacher_with_bn_taps(ctx)
            steps = cfg.iterations * -(-cfg.num_images // cfg.batch_size)
            task = ctx.progress("GZNQ: learning the synthetic image distribution", steps)
            try:
                return synthesize_distribution(
                    teacher, bn, ctx.input_shape, ctx.meta.mean, ctx.meta.std, ctx.meta.num_classes, cfg,
                    ctx.device, task, Checkpointer(ctx.workdir, "gznq_synth.ckpt", dataclasses.asdict(cfg)))
            finally:
                task.close()
        return ctx.cached("gznq", dataclasses.asdict(cfg), build)

    def run(self, ctx: MethodContext):
        c, dev, qmodel = self.config, ctx.device, ctx.qmodel
        synth = self.synthesize(ctx)
        lo, hi = pixel_bounds(ctx.meta.mean, ctx.meta.std, dev) if c.clamp_to_pixels else (None, None)
        dist = ImageDistribution.from_dict({k: v.to(dev) for k, v in synth.items()}, lo, hi).requires_grad_(False)
        labels = synth["labels"].to(dev)
        ctx.log["synthetic_images"] = len(dist)

        with torch.no_grad():
            images = torch.cat([dist.sample() for _ in range(c.calib_draws)]).cpu()
        qmodel.learn_scales(weights=False, acts=False)
        ctx.log["ranges"] = {k: list(v) for k, v in calibrate_on(ctx, images, c.calibration, c.batch_size).items()}

        ctx.log["finetune"] = self.finetunes(ctx)
        if ctx.log["finetune"] and c.ft_steps:
            self._finetune(ctx, dist, labels)
        return qmodel.eval()

    def _finetune(self, ctx: MethodContext, dist: ImageDistribution, labels: torch.Tensor) -> None:
        from ..quant.rewrite import fp_graph_module
        c, qmodel = self.config, ctx.qmodel
        teacher = fp_graph_module(ctx.teacher).to(ctx.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

        def sample(n: int):
            idx = torch.randint(0, len(dist), (n,), device=labels.device)
            with torch.no_grad():
                x = dist.sample(idx)
                if c.ft_augment:
                    x = jitter_flip(x, c.jitter, c.flip)
            return x, labels[idx]

        groups, params = student_param_groups(qmodel, c.ft_lr, learn_weight_scales=c.learn_weight_scales,
                                              learn_act_scales=c.learn_act_scales, scale_lr_ratio=c.scale_lr_ratio)
        opt, sched = make_optimizer(groups, c.ft_optimizer, c.ft_lr, c.ft_steps, c.ft_momentum, c.ft_weight_decay)
        loop = DistillLoop(qmodel, teacher, sample, kd_objective(c.temperature, c.ft_ce_weight), params, opt, sched,
                           steps=c.ft_steps, batch_size=c.ft_batch_size,
                           checkpointer=Checkpointer(ctx.workdir, "gznq_ft.ckpt", dataclasses.asdict(c)),
                           checkpoint_every=c.checkpoint_every, log_every=c.log_every)
        self.loop = loop
        qmodel.train()
        try:
            if loop.restore():
                ctx.log["resumed_from_step"] = loop.resumed_from
            ctx.log["curves"] = loop.run_with_progress(ctx.progress, f"GZNQ: {c.ft_steps} distillation steps",
                                                       c.ft_steps)
        finally:
            set_learned_scales(qmodel, weights=False, acts=False)
            for p in qmodel.parameters():
                p.grad = None
        loop.checkpointer.clear()
