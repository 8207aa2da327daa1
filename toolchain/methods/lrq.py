"""``lrq``: Long-Range Zero-Shot Generative Deep Network Quantization (Luo, Gao, Zhang, Fan, Zhang, Xu;
arXiv 2211.06816; Neural Networks 166, 2023) — our reading (the authors' repository is empty).

Confirmed (abstract; REFERENCES.md "LRQ"): (1) a *long-range generator* with large-kernel
convolution attention, so synthetic data carries global features; (2) *Adversarial Margin Add*
(AMA), an angular margin that enlarges the intra-class angle between a feature vector and its
class centre against the generator's classification loss; (3) *decoupled knowledge
distillation* (DKD; Zhao et al., CVPR 2022, arXiv 2203.08679) from the FP model to the
quantized model. Everything else follows GDFQ (Xu et al., ECCV 2020), the common generator
baseline LRQ builds on.

The method, on the shared parts (nothing copied from ZAQ):

- Generator G (:class:`~.generators.ConditionalGenerator`): GDFQ's label-conditioned generator,
  h = Embedding(y) ⊙ z (z ~ N(0, I), nz = 100, y uniform over the classes), the DFAD/GDFQ body
  with a :class:`~.generators.LargeKernelAttention` (VAN's LKA: depthwise k1×k1 → depthwise
  k2×k2 with dilation d → 1×1, multiplied into the input) after every upsampling block. Its
  images are clamped to the normalized image of [0, 1] pixels before any model sees them.
- G's loss: CE(AMA(P, G(z, y)), y) + ``bn_weight``·L_BN, where AMA (:mod:`.margin`) replaces the
  FP model P's target logit by ‖f‖‖W_y‖·cos(θ_y + m) + b_y (f: the input of P's final Linear,
  W_y: its weight row; ``ama_margin`` = m = 0 switches AMA off, plain GDFQ CE), and L_BN is the
  BN-statistics loss of P on G's batch (:class:`~.bn_stats.BNStatistics`) averaged over BN layers.
- Q's loss (Q: the deployable quantized model, BN folded, every tensor quantized):
  DKD(Q(x), P(x); α·TCKD + β·NCKD at temperature T, the target class being G's label y)
  (:func:`~.distill.dkd_objective`) or plain KD (:func:`~.distill.kd_objective`, the ablation),
  + ``ce_weight``·CE(Q(x), y), x = G(z, y) detached.
- Schedule: ``warmup_rounds`` generator-only rounds (GDFQ's warm-up), then the activation
  ranges are calibrated on ``calib_batches`` batches of the warmed-up generator (the input gets
  its exact normalized-pixel range; optionally the batches are first pulled toward the BN statistics,
  ``calib_refine_steps``), then ``rounds`` rounds of the shared alternating loop
  (:class:`~.loop.TrainLoop`): ``q_steps`` Q steps then ``g_steps`` G steps. G is not
  maximizing the teacher–student discrepancy here; the loop is the same two-player alternation.
  Q: SGD (optionally Nesterov) or Adam with cosine decay over the rounds
  (:func:`~.distill.make_optimizer`); G: Adam (β1 = 0.5, GDFQ), cosine decay.
  Checkpoints go into the run's work directory; a re-run of the same command continues
  (warm-up and game alike) and only the final model is returned.

Choices not confirmed by the paper (all config fields; defaults in parentheses):

- LKA layout and sizes: VAN's block after every upsampling block (``lka`` on;
  ``lka_kernel`` 5, ``lka_dilated_kernel`` 7, ``lka_dilation`` 3 — a 23-pixel receptive field);
  ``lka = false`` is plain GDFQ's generator (ablation).
- Generator head ``g_head`` ("gdfq": Conv → Tanh → BN(affine=False) as in GDFQ/DFAD; "linear":
  the conv output only, clamped to the pixel range). ``nz`` (100), ``ngf`` (64), ``lr_g`` (1e-3),
  ``g_beta1`` (0.5).
- AMA form: ArcFace's additive angular margin on the target logit (``ama_margin`` m in radians,
  0.5 as in ArcFace; 0 = off) at the natural scale ‖f‖‖W_y‖ with the bias kept (``ama_scale`` = 0),
  so m = 0 reproduces the FP logits exactly; ``ama_scale`` = s > 0 uses ArcFace's normalized
  logits s·cos θ instead. Beyond θ > π − m ArcFace's continuation cos θ − m·sin m.
- BN loss: ``bn_loss`` ("l2": our ZeroQ/GDFQ-style squared distance of batch mean and standard
  deviation — GDFQ compares variances — or "kl"), averaged over the BN layers as in GDFQ,
  ``bn_weight`` (0.1, GDFQ; the ``cpu`` recipe uses 20: in a few hundred generator steps GDFQ's
  weight leaves the BN statistics unmatched and distillation on such images does not transfer —
  measurements in ``recipes/lrq.toml``).
- DKD: target class = G's label (``dkd_target`` "label") or P's top-1 ("teacher"; the ``cpu``
  recipe's, since a young generator's labels often disagree with P); α = ``dkd_alpha``
  (1), β = ``dkd_beta`` (8), T = ``temperature`` (4): DKD's CIFAR-100 settings. DKD's own
  warm-up of the loss weight is not implemented. ``distill = "kd"``: T²·KL at the same T (ablation).
  ``ce_weight`` (0): CE of Q to G's labels (GDFQ uses 1 with real-label-free KD).
- Q's optimizer (``student.optimizer`` "adam", ``lr_q``, ``momentum``, ``nesterov``, ``weight_decay``):
  LRQ's is unpublished; GDFQ uses SGD-Nesterov lr 1e-4 (momentum 0.9, wd 1e-4) on a student
  with unfolded BN. On our BN-folded model with DKD (β·T² = 128 scales the gradients) one such
  SGD step took the DKD loss on ResNet-20 W4A4 from 27 to 620, while Adam at 1e-5 or 5e-5 lowered
  it, so both recipes use Adam (``paper``: 1e-4, ``cpu``: 5e-5) — unvalidated beyond that probe.
- ``student.learn_act_scales`` / ``student.learn_weight_scales`` (off): LSQ-style learning of the
  quantizer step sizes (:mod:`.student`), in a separate group at lr_q·``student.scale_lr_ratio``
  without weight decay.
- ``warmup_rounds`` (GDFQ: 4 of 400 epochs), ``student.calibration`` ("mse"), ``calib_batches`` (4).
- ``calib_refine_steps`` (0; both recipes: 50) at ``calib_refine_lr`` (0.05): GDFQ/LRQ have no
  calibration step (their quantizers track ranges during training, outside the deployable model);
  ours calibrates once, and the warmed-up generator's batches match the BN statistics only loosely
  (BN loss per layer ~0.14 after 200 warm-up rounds). These steps pull the calibration batches
  — only them, the game still sees the generator's raw images — toward the BN statistics
  as ZeroQ does from noise (:func:`~.synthesis.match_bn_statistics`): ResNet-20 W4A4 calibration
  85–86% → 88.0% (BN loss per layer 0.01) and the final model 89.68% → 90.36% in a torch probe.
- ``q_refine_steps`` (0; ``cpu`` recipe: 10): the same refinement applied to every batch Q learns from
  (the generator is still trained on its own images); costs ``q_refine_steps`` teacher forward/backward
  passes per Q step (about twice the ``cpu`` recipe's time). ResNet-20 W4A4 through onnxruntime, five
  seeds: 90.42 ± 0.32% with 10 steps, 90.07 ± 0.55% without (``recipes/lrq.toml``).
- ``q_steps`` / ``g_steps`` (1 / 1, GDFQ's alternation; the ``cpu`` recipe takes 2 Q steps per
  G step so the short schedule spends more of its time fine-tuning).
- Generator labels are drawn uniformly per batch (GDFQ), not class-balanced.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .bn_stats import BN_LOSSES, teacher_with_bn_taps
from .checkpoint import Checkpointer
from .config import Rule, group, setting
from .distill import DKD_TARGETS, dkd_objective, kd_objective, make_optimizer
from .generators import ConditionalGenerator, GeneratorSampler
from .images import pixel_bounds
from .loop import Player, TrainLoop, WarmUp
from .margin import ClassifierTap, margin_cross_entropy
from .registry import Method, MethodContext, register_method
from .schedule import DISTILL_STEP_COST, GENERATOR_STEP_COST, Knob, Phase
from .student import StudentBN, StudentConfig, calibrate_student, student_param_groups, training
from .synthesis import match_bn_statistics

DISTILL = ("dkd", "kd")


@register_method("lrq")
class LRQ(Method):
    """LRQ (see the module docstring for the method and every unconfirmed choice)."""

    needs_batchnorm = True
    needs_class_logits = True

    @dataclass(frozen=True)
    class Config(Method.Config):
        """Attributes (defaults: GDFQ/DKD/VAN values where published; see the module docstring):
            rounds: rounds of the alternating loop (GDFQ: 400 epochs × 200 iterations = 80000).
            warmup_rounds: generator-only rounds before calibration (GDFQ: 4 × 200 = 800).
            q_steps, g_steps: quantized-model and generator steps per round (1, 1).
            nz, ngf: generator latent size (100) and width (64).
            lka, lka_kernel, lka_dilated_kernel, lka_dilation: long-range blocks (on, 5, 7, 3; kernels odd).
            g_head: "gdfq" or "linear".
            lr_g, g_beta1: the generator's Adam (1e-3, 0.5).
            ama_margin: AMA's angular margin m in radians (0.5; 0 = off; < π).
            ama_scale: 0 = natural scale ‖f‖‖W_y‖, s > 0 = ArcFace's fixed scale.
            bn_loss, bn_weight: the generator's BN-statistics term ("l2", 0.1).
            distill: "dkd" or "kd"; dkd_alpha, dkd_beta, temperature, dkd_target: DKD (1, 8, 4, "label").
            ce_weight: CE of the quantized model to the generator's labels (0).
            calib_refine_steps, calib_refine_lr: ZeroQ steps (Adam, cosine) on the calibration batches
                toward the BN statistics before calibrating (0: calibrate on the generator's images as they are).
            q_refine_steps: the same steps (at calib_refine_lr) on every batch the quantized model learns
                from, before the teacher labels it (0: the generator's images as they are).
            lr_q, momentum, nesterov, weight_decay: the quantized model's optimizer (Nesterov: SGD only).
            calib_batches: warmed-up generator batches the initial activation ranges are calibrated on.
            clamp_to_pixels: clamp generated images to the normalized image of [0, 1] pixels.
            student: the quantized model's training (:class:`~.student.StudentConfig`): ``batch_size``
                generated images per step (GDFQ: 200), ``optimizer`` ("sgd" | "adam"), scale learning,
                calibration, checkpoints and logging (every so many rounds).
        """

        rounds: int = setting(80000, ge=0)
        warmup_rounds: int = setting(800, ge=0)
        q_steps: int = setting(1, ge=1)
        g_steps: int = setting(1, ge=1)
        nz: int = setting(100, ge=1)
        ngf: int = setting(64, ge=1)
        lka: bool = True
        lka_kernel: int = setting(5, ge=1, odd=True)
        lka_dilated_kernel: int = setting(7, ge=1, odd=True)
        lka_dilation: int = setting(3, ge=1)
        g_head: str = setting("gdfq", choices=ConditionalGenerator.HEADS)
        lr_g: float = setting(1e-3, gt=0)
        g_beta1: float = setting(0.5, ge=0, lt=1)
        ama_margin: float = setting(0.5, ge=0, lt=math.pi)
        ama_scale: float = setting(0.0, ge=0)
        bn_loss: str = setting("l2", choices=BN_LOSSES)
        bn_weight: float = setting(0.1, ge=0)
        distill: str = setting("dkd", choices=DISTILL)
        dkd_alpha: float = setting(1.0, ge=0)
        dkd_beta: float = setting(8.0, ge=0)
        temperature: float = setting(4.0, gt=0)
        dkd_target: str = setting("label", choices=DKD_TARGETS)
        ce_weight: float = setting(0.0, ge=0)
        calib_refine_steps: int = setting(0, ge=0)
        calib_refine_lr: float = setting(0.05, gt=0)
        q_refine_steps: int = setting(0, ge=0)
        lr_q: float = setting(1e-4, gt=0)
        momentum: float = setting(0.9, ge=0)
        nesterov: bool = True
        weight_decay: float = setting(0.0, ge=0)
        calib_batches: int = setting(4, ge=1)
        clamp_to_pixels: bool = True
        student: StudentConfig = group(StudentConfig, batch_size=200, optimizer="adam")

        rules = (Rule("nesterov", lambda c: not (c.student.optimizer == "sgd" and c.nesterov and c.momentum <= 0),
                      "Nesterov SGD needs momentum > 0 (or set nesterov = false)"),)

    #: the warm-up and main loops of the last run (for tests and introspection)
    warmup: TrainLoop | None = None
    game: TrainLoop | None = None

    def student_objective(self):
        """``loss(student_logits, teacher_logits, y) -> {"loss", …}``: DKD or KD (+ CE to y)."""
        c = self.config
        if c.distill == "dkd":
            return dkd_objective(c.dkd_alpha, c.dkd_beta, c.temperature, c.ce_weight, c.dkd_target)
        return kd_objective(c.temperature, c.ce_weight)

    def refine(self, ctx: MethodContext, teacher, bn, batches: list[torch.Tensor], bounds) -> list[torch.Tensor]:
        """The calibration batches after ``calib_refine_steps`` ZeroQ steps each toward the BN statistics
        (:func:`~.synthesis.match_bn_statistics`, the generator's ``bn_loss``), with progress."""
        c = self.config
        task = ctx.progress(f"LRQ: refining {len(batches)} calibration batches toward the BN statistics",
                            c.calib_refine_steps * len(batches))
        try:
            return [match_bn_statistics(teacher, bn, x, c.calib_refine_steps, c.calib_refine_lr, c.bn_loss, bounds,
                                        task) for x in batches]
        finally:
            task.close()

    def phases(self, scheme, is_cached) -> list[Phase]:
        c = self.config
        return [Phase("generator warm-up", c.warmup_rounds, c.student.batch_size, c.g_steps * GENERATOR_STEP_COST,
                      (Knob("warmup_rounds", min(20, c.warmup_rounds), 10),)),
                # a refinement step of a Q batch is one BN-statistics step (synthesis_cost, probed)
                Phase("adversarial rounds", c.rounds, c.student.batch_size,
                      c.q_steps * (DISTILL_STEP_COST + c.q_refine_steps * self.synthesis_cost) + c.g_steps * GENERATOR_STEP_COST,
                      (Knob("rounds", min(50, c.rounds), 10),))] + super().phases(scheme, is_cached)

    def run(self, ctx: MethodContext):
        c, s, dev, qmodel = self.config, self.config.student, ctx.device, ctx.qmodel
        teacher, bn = teacher_with_bn_taps(ctx)  # a private copy: its taps need no removal
        classifier = ClassifierTap(teacher) if c.ama_margin > 0 or c.ama_scale > 0 else None
        ctx.log["ama"] = None if classifier is None else {"classifier": classifier.node_name}
        generator = ConditionalGenerator(
            ctx.input_shape, ctx.meta.num_classes, nz=c.nz, ngf=c.ngf, lka=c.lka, lka_kernel=c.lka_kernel,
            lka_dilated_kernel=c.lka_dilated_kernel, lka_dilation=c.lka_dilation, head=c.g_head).to(dev).train()
        bounds = pixel_bounds(ctx.meta.mean, ctx.meta.std, dev) if c.clamp_to_pixels else None
        images = GeneratorSampler(generator, s.batch_size, dev, bounds)
        objective = self.student_objective()

        def q_loss():
            x, y = images(False)
            if c.q_refine_steps:
                x = match_bn_statistics(teacher, bn, x, c.q_refine_steps, c.calib_refine_lr, c.bn_loss, bounds)
            with torch.no_grad():
                t = teacher(x)
            return objective(qmodel(x), t, y)

        def g_loss():
            x, y = images(True)
            logits = teacher(x)
            ce = (F.cross_entropy(logits, y) if classifier is None else
                  margin_cross_entropy(classifier, logits, y, c.ama_margin, c.ama_scale))
            l_bn = bn.loss(c.bn_loss) / len(bn)
            acc = (logits.detach().argmax(1) == y).float().mean()
            return {"loss": ce + c.bn_weight * l_bn, "ce": ce, "bn": l_bn, "acc": acc}

        student_bn = StudentBN(qmodel, s, c.rounds)
        ctx.log["student_bn"] = student_bn.log()
        groups, q_params = student_param_groups(qmodel, c.lr_q, learn_weight_scales=s.learn_weight_scales,
                                                learn_act_scales=s.learn_act_scales, scale_lr_ratio=s.scale_lr_ratio)
        opt_q, sched_q = make_optimizer(groups, s.optimizer, c.lr_q, c.rounds, c.momentum, c.weight_decay,
                                        nesterov=c.nesterov and s.optimizer == "sgd")
        g_params = list(generator.parameters())
        opt_g, sched_g = make_optimizer(g_params, "adam", c.lr_g, c.rounds, betas=(c.g_beta1, 0.999))
        fingerprint = dataclasses.asdict(c)
        # warm-up: generator steps only, no schedulers (the main loop's cosine starts after it)
        q_player = Player("q", q_loss, q_params, opt_q, sched_q, steps=c.q_steps)
        g_player = Player("g", g_loss, g_params, opt_g, sched_g, steps=c.g_steps)
        self.warmup = warmup = WarmUp(
            q_player, g_player, c.warmup_rounds, {"generator": generator},
            checkpointer=Checkpointer(ctx.workdir, "lrq_warmup.ckpt", fingerprint),
            checkpoint_every=s.checkpoint_every, log_every=s.log_every)
        self.game = game = TrainLoop(
            [q_player, g_player],
            c.rounds, {"qmodel": qmodel, "generator": generator},
            checkpointer=Checkpointer(ctx.workdir, "lrq.ckpt", fingerprint),
            checkpoint_every=s.checkpoint_every, log_every=s.log_every, hooks=[student_bn.on_round])
        with training(qmodel, student_bn.fold):
            if not game.resume(ctx.log, "resumed_from_round"):
                warmup.play(ctx.log, ctx.progress, f"LRQ: {c.warmup_rounds} generator warm-up rounds")
                with torch.no_grad():
                    batches = [images(False)[0] for _ in range(c.calib_batches)]
                if c.calib_refine_steps:
                    batches = self.refine(ctx, teacher, bn, batches, bounds)
                ranges = calibrate_student(ctx, batches, s.calibration, learn_weight_scales=s.learn_weight_scales,
                                           learn_act_scales=s.learn_act_scales)
                ctx.log["initial_ranges"] = {k: list(v) for k, v in ranges.items()}
            ctx.log["curves"] = game.run_with_progress(
                ctx.progress, f"LRQ: {c.rounds} rounds of {c.q_steps} Q step(s) + {c.g_steps} G step(s)")
        game.checkpointer.clear()
        warmup.checkpointer.clear()
        return qmodel.eval()
