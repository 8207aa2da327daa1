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
   samples of the distribution (:func:`~.distill.distill_player` in a :class:`~.loop.TrainLoop`,
   T²·KL on softened logits).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import jitter_flip
from .bn_stats import BN_LOSSES, BNStatistics, teacher_with_bn_taps
from .bnstat import calibrate_on
from .checkpoint import Checkpointer
from .config import group, setting
from .distill import distill_player, kd_objective, make_optimizer
from .images import clamp_pixels, pixel_bounds
from .loop import TrainLoop
from .registry import Method, MethodContext, register_method
from .schedule import DISTILL_STEP_COST, Knob, Phase, synthesis_phase
from .student import StudentBN, StudentConfig, student_param_groups, training
from .synthesis import SynthesisConfig

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
        return clamp_pixels(x, None if self.lo is None else (self.lo, self.hi))

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
class GZNQSynthesisConfig(SynthesisConfig):
    """The settings a synthetic distribution depends on (its cache key; the ``synthesis`` group of
    :class:`GZNQ.Config`): those of :class:`~.synthesis.SynthesisConfig` (GZNQ's defaults: 250
    iterations, lr 0.1, the "kl" BN loss) and

    Attributes:
        bn_weight, ce_weight, tv_weight: the loss weights (>= 0).
        jitter, flip: the image priors (random roll of up to ``jitter`` pixels, horizontal flip).
        reparameterize: learned per-image log-variances (off: point images).
        init_logvar: their start value.
    """

    iterations: int = setting(250, ge=1)
    lr: float = setting(0.1, gt=0)
    bn_loss: str = setting("kl", choices=BN_LOSSES)
    bn_weight: float = setting(1.0, ge=0)
    ce_weight: float = setting(0.1, ge=0)
    tv_weight: float = setting(0.0, ge=0)
    jitter: int = setting(2, ge=0)
    flip: bool = True
    reparameterize: bool = True
    init_logvar: float = -4.0


def synthesize_distribution(teacher: nn.Module, bn: BNStatistics, input_shape, mean, std, num_classes: int,
                            cfg: GZNQSynthesisConfig, device, progress=None,
                            checkpointer: Checkpointer | None = None) -> dict:
    """Learn the synthetic image distribution batch by batch (see the module docstring, step 2).

    Args:
        teacher: FP model with ``bn``'s taps inserted, eval mode, frozen, on ``device``.
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


# ----------------------------------------------------------------------------- the method
@register_method("gznq")
class GZNQ(Method):
    """GZNQ (see the module docstring). The paper has no public code; only "BN statistics as
    a generative model of the data, a distribution rather than one Gaussian noise batch, the
    synthetic set as the calibration set" is confirmed (REFERENCES.md). Our reading, every
    unconfirmed choice a config field (``recipes/gznq.toml``; defaults in parentheses):

    - ``synthesis.bn_loss`` ("kl"): per-BN-layer Gaussian KL(N(μ̂, σ̂²) ‖ N(μ, σ²)), mean over
      channels, summed over layers; "l2" is the ZeroQ baseline (ablation). ``synthesis.bn_weight`` (1.0).
    - ``synthesis.ce_weight`` (0.1): cross-entropy of the FP logits to a target label per image;
      labels balanced over the classes (cycling 0..K−1).
    - ``synthesis.reparameterize`` (on): learned per-image mean and log-variance, a fresh sample per
      step; ``synthesis.init_logvar`` (−4, σ ≈ 0.14 in normalized units); means start as N(0, 1)
      noise. Off: point images (the ablation).
    - Image priors: ``synthesis.jitter`` (2 px random roll), ``synthesis.flip`` (on),
      ``synthesis.tv_weight`` (0: off).
    - ``synthesis.clamp_to_pixels`` (on): samples and means kept in the normalized image of [0, 1] pixels.
    - Adam, ``synthesis.lr`` (0.1) with cosine decay, ``synthesis.iterations`` per batch of
      ``synthesis.batch_size``.
    - ``student.calibration`` ("mse") on ``calib_draws`` (1) fresh samples of every learned image.
    - ``finetune`` ("auto": on when the weight or activation bit width is below
      ``finetune_below_bits`` (5), i.e. at ≤ 4 bits; "on"/"off" force it): distillation of the
      quantized model from the FP model on fresh samples, T²·KL at ``temperature`` (4)
      (+ ``ft_ce_weight`` (0)·CE to the target labels), ``student.optimizer`` ("adam", ``ft_lr``
      1e-4, cosine decay), ``ft_steps`` × ``student.batch_size``, jitter/flip priors on the
      fine-tuning batches too (``ft_augment``, on). Weights and biases are trained, quantizer
      scales stay as calibrated (unless ``student.learn_*_scales``).
    - Synthesis checkpoints after every finished batch, fine-tuning every
      ``student.checkpoint_every`` steps, into the run's work directory; a re-run resumes.
    """

    needs_batchnorm = True
    synthesizes_calibration_images = True
    needs_class_logits = True

    @dataclass(frozen=True)
    class Config(Method.Config):
        """Attributes:
            synthesis: the synthetic distribution (:class:`GZNQSynthesisConfig`, its cache key);
                its ``batch_size`` also batches the calibration.
            calib_draws: fresh samples of every learned image the activations are calibrated on.
            finetune ("auto" | "on" | "off"; true/false accepted), finetune_below_bits.
            ft_steps, ft_lr, ft_momentum, ft_weight_decay, temperature, ft_ce_weight, ft_augment:
                distillation fine-tuning.
            student: the quantized model's calibration and fine-tuning (:class:`~.student.StudentConfig`:
                ``batch_size`` (64) images per fine-tuning step, ``optimizer``, scale learning,
                ``calibration``, ``checkpoint_every`` (50) and ``log_every`` in steps).
        """

        synthesis: GZNQSynthesisConfig = group(GZNQSynthesisConfig)
        calib_draws: int = setting(1, ge=1)
        finetune: str = setting("auto", choices=FINETUNE_MODES,
                                aliases={"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"})
        finetune_below_bits: int = 5
        ft_steps: int = setting(300, ge=0)
        ft_lr: float = setting(1e-4, gt=0)
        ft_momentum: float = setting(0.9, ge=0)
        ft_weight_decay: float = setting(0.0, ge=0)
        temperature: float = setting(4.0, gt=0)
        ft_ce_weight: float = setting(0.0, ge=0)
        ft_augment: bool = True
        student: StudentConfig = group(StudentConfig, batch_size=64, checkpoint_every=50)

    def finetunes(self, ctx: MethodContext) -> bool:
        """Whether this run fine-tunes (``finetune`` resolved against the scheme's bit widths)."""
        return self._finetunes_at(ctx.scheme)

    def _finetunes_at(self, scheme) -> bool:
        c = self.config
        if c.finetune == "auto":
            return min(scheme.wbits, scheme.abits) < c.finetune_below_bits
        return c.finetune == "on"

    def phases(self, scheme, is_cached) -> list[Phase]:
        c = self.config
        out = [synthesis_phase("synthesis", c.synthesis, is_cached("gznq", dataclasses.asdict(c.synthesis)),
                               self.synthesis_cost)]
        if self._finetunes_at(scheme) and c.ft_steps:
            out.append(Phase("distillation", c.ft_steps, c.student.batch_size, DISTILL_STEP_COST,
                             (Knob("ft_steps", min(50, c.ft_steps), 50),)))
        return out + super().phases(scheme, is_cached)

    def synthesize(self, ctx: MethodContext) -> dict:
        """The cached synthetic distribution (built on first use; ``ctx.qmodel`` is not needed):
        ``{"mean", "logvar" (if reparameterized), "labels"}`` as in :func:`synthesize_distribution`."""
        cfg = self.config.synthesis

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
        bounds = pixel_bounds(ctx.meta.mean, ctx.meta.std, dev) if c.synthesis.clamp_to_pixels else (None, None)
        dist = ImageDistribution.from_dict({k: v.to(dev) for k, v in synth.items()}, *bounds).requires_grad_(False)
        labels = synth["labels"].to(dev)
        ctx.log["synthetic_images"] = len(dist)

        with torch.no_grad():
            images = self.calibration_images = torch.cat([dist.sample() for _ in range(c.calib_draws)]).cpu()
        qmodel.learn_scales(weights=False, acts=False)
        ranges = calibrate_on(ctx, images, c.student.calibration, c.synthesis.batch_size)
        ctx.log["ranges"] = {k: list(v) for k, v in ranges.items()}

        ctx.log["finetune"] = self.finetunes(ctx)
        if ctx.log["finetune"] and c.ft_steps:
            self._finetune(ctx, dist, labels)
        return qmodel.eval()

    def _finetune(self, ctx: MethodContext, dist: ImageDistribution, labels: torch.Tensor) -> None:
        c, s, qmodel = self.config, self.config.student, ctx.qmodel
        jitter, flip = c.synthesis.jitter, c.synthesis.flip

        def sample(n: int):
            idx = torch.randint(0, len(dist), (n,), device=labels.device)
            with torch.no_grad():
                x = dist.sample(idx)
                if c.ft_augment:
                    x = jitter_flip(x, jitter, flip)
            return x, labels[idx]

        student_bn = StudentBN(qmodel, s, c.ft_steps)
        ctx.log["student_bn"] = student_bn.log()
        groups, params = student_param_groups(qmodel, c.ft_lr, learn_weight_scales=s.learn_weight_scales,
                                              learn_act_scales=s.learn_act_scales, scale_lr_ratio=s.scale_lr_ratio)
        opt, sched = make_optimizer(groups, s.optimizer, c.ft_lr, c.ft_steps, c.ft_momentum, c.ft_weight_decay)
        player = distill_player(ctx.teacher, qmodel, sample, kd_objective(c.temperature, c.ft_ce_weight),
                                s.batch_size, params, opt, sched)
        self.loop = loop = TrainLoop(
            [player], c.ft_steps, {"student": qmodel}, counter="step",
            checkpointer=Checkpointer(ctx.workdir, "gznq_ft.ckpt", dataclasses.asdict(c)),
            checkpoint_every=s.checkpoint_every, log_every=s.log_every, hooks=[student_bn.on_round])
        with training(qmodel, student_bn.fold):
            loop.resume(ctx.log, "resumed_from_step")
            ctx.log["curves"] = loop.run_with_progress(ctx.progress, f"GZNQ: {c.ft_steps} distillation steps")
        loop.checkpointer.clear()
