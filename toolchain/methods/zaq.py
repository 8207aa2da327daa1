"""``zaq``: Zero-shot Adversarial Quantization (Liu, Zhang, Wang; CVPR 2021; arXiv 2103.15263).

A generator G (:class:`~.generators.DFADGenerator`) and the quantized model Q play a
max–min game (two players of :class:`~.loop.TrainLoop`) around the frozen FP model P:

- Q step (×5 per round): L_Q = L1(Q(x), P(x)) + α·Σ_l w_l·D_l, x = G(z) detached,
  where D_l is the relation discrepancy (:mod:`.relation`) of the feature maps at the
  l-th resolution-stage output (:func:`~.features.stage_output_nodes`; the same graph
  positions in Q, read after Q's activation quantizer);
- G step (×1 per round): L_G = −L1(Q(x), P(x)) − α·Σ_l w_l·D_l − β·mean|F_P^last|
  (the last term pushes the FP model's last-stage activations up).

Q is the deployable model itself (BN folded, every tensor quantized); its weights and
biases are fine-tuned with SGD (lr 0.1, momentum 0.9, wd 5e-4; ``optimizer = "adam"`` is our
default in both recipes, see below), G with Adam (lr 1e-3), both ×0.1 at 1/3 and 2/3 of the rounds. Before the game, the activation ranges are
calibrated on the untrained generator's first batches (the network input gets the exact
normalized-pixel range). Only the final model is returned.

Choices not confirmed by the paper or the authors' code (REFERENCES.md), all config fields:

- ``student.learn_act_scales`` / ``student.learn_weight_scales`` (default off): LSQ-style learning of the
  quantizer step sizes; the authors re-derive ranges in their own (non-deployable)
  quantizer. When on, scales are a separate SGD group with lr = ``lr_q·student.scale_lr_ratio``
  and no weight decay (our fake-quant has no LSQ gradient scaling).
- ``student.optimizer`` ("sgd" published; the recipes use "adam"): the published SGD at lr 0.1 relies on
  the BN layers of the authors' student, which make its conv weights scale-free. Our student has
  BN folded, its gradients are up to 10× the weights' norm per layer (ResNet-20 W4A4), and SGD at
  lr 1e-2 or 1e-3 collapsed it to ~10% top-1 within 10–20 rounds; Adam's per-weight steps of ≈ lr
  keep the calibrated weights (measurements in ``recipes/zaq.toml``).
- ``student.calibration`` ("mse") and ``calib_batches`` (4) for the initial ranges.
- ``clamp_to_pixels`` (on): generated images are clamped to the normalized image of
  [0, 1] pixels before both models see them — the deployed input quantizer clips there
  anyway, and otherwise the generator can win by leaving the representable input range.
- ``feature_weights`` ("uniform", the code's single α) or "adaptive" (our reading of the
  paper's per-layer adaptive weights: L·softmax of the detached per-layer discrepancies).
- The feature taps are chosen from the graph (every resolution stage's output) rather
  than hand-picked per architecture; for CIFAR ResNet-20 they are the three stage outputs
  the authors use.
- ``student.bn_mode`` ("folded"; "qat": the BN back in the loop with batch statistics, frozen after
  ``student.bn_freeze`` of the rounds and folded at the end, :class:`~.student.StudentBN`) — what
  makes the published SGD at lr 0.1 meaningful on a deployable student (issue 18).

Deviations from the paper, each a switch that is off by default (0 = published), for the ablation
of issue 18; they are the parts LRQ's recipe showed to matter, composed from the same shared code:

- ``bn_weight`` / ``bn_loss``: a BN-statistics term in G's loss, ``+ bn_weight · Σ_l BN_l / L``
  (GDFQ/ZeroQ's statistic matching, :class:`~.bn_stats.BNStatistics`), so the images Q learns from
  also match the statistics its BN was folded from;
- ``warmup_rounds``: generator-only rounds before the initial calibration and the game
  (:class:`~.loop.WarmUp`, as GDFQ and LRQ);
- ``q_refine_steps`` / ``refine_lr``: ZeroQ refinement of every batch Q learns from toward the BN
  statistics (:func:`~.synthesis.match_bn_statistics`) before the teacher labels it;
- Adam instead of SGD (``student.optimizer``, above).

- ``reconstruct`` (a setting of every method, ``none`` by default; the ``cpu`` recipe: ``adaround``):
  block reconstruction (:mod:`.reconstruct`) after the game, on a ZeroQ set of ``recon.images``
  BN-matched images — the generator's adversarial images carry no BN-statistics prior — or, for a
  model without BN, on the final generator's images. On the cpu budget the short game does not
  improve on its own calibration; reconstruction is what lifts the model (docs/methods/zaq.md).

- Checkpoints every ``student.checkpoint_every`` rounds into the run's work directory; a re-run
  of the same command continues from the last one and deletes it when done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..graph.ops import has_batchnorm
from .bn_stats import BN_LOSSES, BNStatistics
from .checkpoint import Checkpointer
from .config import group, setting
from .distill import make_optimizer
from .features import stage_output_nodes, teacher_student_taps
from .generators import DFADGenerator, GeneratorSampler
from .images import pixel_bounds
from .loop import Player, TrainLoop, WarmUp
from .registry import Method, MethodContext, register_method
from .schedule import DISTILL_STEP_COST, GENERATOR_STEP_COST, Knob, Phase, best_seconds
from .relation import FEATURE_WEIGHTS, feature_discrepancy
from .student import StudentBN, StudentConfig, calibrate_student, student_param_groups, training
from .synthesis import match_bn_statistics


def multistep(optimizer, rounds: int, gamma: float = 0.1):
    """MultiStepLR ×``gamma`` at 1/3 and 2/3 of ``rounds`` (stepped once per round)."""
    milestones = sorted({max(1, round(rounds / 3)), max(1, round(2 * rounds / 3))})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


@register_method("zaq")
class ZAQ(Method):
    needs_batchnorm = False
    needs_class_logits = True

    @dataclass(frozen=True)
    class Config(Method.Config):
        """Attributes (published values as defaults; see the module docstring for the unconfirmed ones):
            rounds: game rounds, each ``q_steps`` Q steps + 1 G step (paper: 300×60 = 18000).
            q_steps: Q steps per G step (paper: 5).
            nz: latent size (paper: 256).
            lr_q, momentum, weight_decay: Q's optimizer (paper SGD: 0.1, 0.9, 5e-4; momentum: SGD only).
            lr_g: Adam of G (paper: 1e-3).
            lr_decay: MultiStepLR factor at 1/3 and 2/3 of the rounds (paper: 0.1).
            alpha: weight of the feature term (code: 1.0).
            beta: weight of G's activation regularizer (paper: 0.1).
            gamma: relation-transform mixing factor (paper: 0.1).
            feature_weights: "uniform" or "adaptive".
            calib_batches: generated batches the initial activation ranges are calibrated on.
            clamp_to_pixels: clamp generated images to the normalized image of [0, 1] pixels.
            bn_weight, bn_loss: deviation — G's BN-statistics term (0 = published; "l2" | "kl").
            warmup_rounds: deviation — generator-only rounds before the game (0 = published).
            q_refine_steps, refine_lr: deviation — ZeroQ steps (Adam, cosine, ``refine_lr``) on every
                batch Q learns from, toward the BN statistics (0 = published).
            student: Q's training (:class:`~.student.StudentConfig`): ``batch_size`` generated images
                per step (paper: 256), ``optimizer`` "sgd" (paper) or "adam", scale learning
                (``scale_lr_ratio`` 0.01), calibration, checkpoints and logging (every so many rounds).
        """

        rounds: int = setting(18000, ge=0)
        q_steps: int = setting(5, ge=1)
        nz: int = setting(256, ge=1)
        lr_q: float = setting(0.1, gt=0)
        momentum: float = setting(0.9, ge=0)
        weight_decay: float = setting(5e-4, ge=0)
        lr_g: float = setting(1e-3, gt=0)
        lr_decay: float = setting(0.1, gt=0, le=1)
        alpha: float = setting(1.0, ge=0)
        beta: float = setting(0.1, ge=0)
        gamma: float = setting(0.1, ge=0)
        feature_weights: str = setting("uniform", choices=FEATURE_WEIGHTS)
        calib_batches: int = setting(4, ge=1)
        clamp_to_pixels: bool = True
        bn_weight: float = setting(0.0, ge=0)
        bn_loss: str = setting("l2", choices=BN_LOSSES)
        warmup_rounds: int = setting(0, ge=0)
        q_refine_steps: int = setting(0, ge=0)
        refine_lr: float = setting(0.05, gt=0)
        student: StudentConfig = group(StudentConfig, batch_size=256, optimizer="sgd", scale_lr_ratio=0.01)

    #: the game of the last run (for tests and introspection)
    game: TrainLoop | None = None

    def phases(self, scheme, is_cached) -> list[Phase]:
        c = self.config
        warmup = [Phase("generator warm-up", c.warmup_rounds, c.student.batch_size, GENERATOR_STEP_COST,
                        (Knob("warmup_rounds", min(10, c.warmup_rounds), 5),))] if c.warmup_rounds else []
        # a refinement step is one BN-statistics step (synthesis_cost, probed); every Q and G step
        # also computes the feature discrepancy, whose cost an FP pass does not predict (probe_costs)
        relation = self.costs.get("relation", 0.0)
        return warmup + [Phase("adversarial rounds", c.rounds, c.student.batch_size,
                               c.q_steps * (DISTILL_STEP_COST + c.q_refine_steps * self.synthesis_cost + relation)
                               + GENERATOR_STEP_COST + relation,
                               (Knob("rounds", min(20, c.rounds), 10),))] + super().phases(scheme, is_cached)

    @classmethod
    def probe_costs(cls, teacher, input_shape, device, pass_s):
        """``relation``: one forward+backward of the feature discrepancy per image, at the shapes of
        the FP model's stage outputs (:func:`~.features.stage_output_nodes`), in FP-pass units. The
        spatial relation is P×P per image (P = H·W positions), so its cost grows with the square of
        the resolution, unlike a pass: on ResNet-20 a round took ~8× the estimate without it
        (docs/time_budget.md)."""
        shapes = [tuple(n.meta["val"].shape[1:]) for n in stage_output_nodes(teacher)]
        batch = 1  # P×P floats per map and image: 0.6 GB for a 112×112 stage (MobileNetV2)
        f_q = [torch.randn(batch, *s, device=device, requires_grad=True) for s in shapes]
        f_p = [torch.randn(batch, *s, device=device) for s in shapes]
        relation = best_seconds(lambda: feature_discrepancy(f_q, f_p).backward(), device) / batch / pass_s
        return {**super().probe_costs(teacher, input_shape, device, pass_s), "relation": relation}

    def uses_bn_statistics(self) -> bool:
        """Whether a deviation reads the teacher's BN statistics (``bn_weight``, ``q_refine_steps``)."""
        return self.config.bn_weight > 0 or self.config.q_refine_steps > 0

    @property
    def needs_synthetic_images(self) -> bool:
        """Only when a deviation reads BN statistics (a model without BN is then refused before
        running). The post-steps (reconstruction, bias correction) do not need them: on a model with BN
        they run on a ZeroQ set, on one without BN on the final generator's images (:meth:`run`)."""
        return self.uses_bn_statistics()

    def run(self, ctx: MethodContext):
        c, s, dev, qmodel = self.config, self.config.student, ctx.device, ctx.qmodel
        teacher = ctx.teacher_copy()  # private: it gets feature taps
        t_taps, s_taps = teacher_student_taps(teacher, qmodel.gm)
        ctx.log["feature_taps"] = {"fp": t_taps.names, "quantized": s_taps.names}
        bn = BNStatistics(teacher).to(dev) if self.uses_bn_statistics() else None  # after the feature taps
        generator = DFADGenerator(ctx.input_shape, nz=c.nz).to(dev).train()
        bounds = pixel_bounds(ctx.meta.mean, ctx.meta.std, dev) if c.clamp_to_pixels else None
        images = GeneratorSampler(generator, s.batch_size, dev, bounds)

        def discrepancy(x, teacher_grad: bool):
            with torch.set_grad_enabled(teacher_grad):
                logits_p = teacher(x)
                feats_p = t_taps.values()
            logits_q = qmodel(x)
            l_out = F.l1_loss(logits_q, logits_p)
            l_feat = feature_discrepancy(s_taps.values(), feats_p, c.gamma, c.feature_weights)
            return l_out, l_feat, feats_p

        def q_loss():
            x = images(False)[0]
            if c.q_refine_steps:
                x = match_bn_statistics(teacher, bn, x, c.q_refine_steps, c.refine_lr, c.bn_loss, bounds)
            l_out, l_feat, _ = discrepancy(x, teacher_grad=False)
            return {"loss": l_out + c.alpha * l_feat, "out": l_out, "feat": l_feat}

        def g_loss():
            l_out, l_feat, feats_p = discrepancy(images(True)[0], teacher_grad=True)
            act = feats_p[-1].abs().mean()
            out = {"loss": -l_out - c.alpha * l_feat - c.beta * act, "out": l_out, "feat": l_feat, "act": act}
            if c.bn_weight:
                out["bn"] = bn.loss(c.bn_loss) / len(bn)
                out["loss"] = out["loss"] + c.bn_weight * out["bn"]
            return out

        student_bn = StudentBN(qmodel, s, c.rounds)
        ctx.log["student_bn"] = student_bn.log()
        groups, q_params = student_param_groups(qmodel, c.lr_q, learn_weight_scales=s.learn_weight_scales,
                                                learn_act_scales=s.learn_act_scales, scale_lr_ratio=s.scale_lr_ratio)
        opt_q, _ = make_optimizer(groups, s.optimizer, c.lr_q, c.rounds, c.momentum, c.weight_decay)
        opt_g = torch.optim.Adam(generator.parameters(), lr=c.lr_g)
        q_player = Player("q", q_loss, q_params, opt_q, multistep(opt_q, c.rounds, c.lr_decay), steps=c.q_steps)
        g_player = Player("g", g_loss, list(generator.parameters()), opt_g, multistep(opt_g, c.rounds, c.lr_decay))
        fingerprint = dataclasses.asdict(c)
        warmup = WarmUp(q_player, g_player, c.warmup_rounds, {"generator": generator},
                        checkpointer=Checkpointer(ctx.workdir, "zaq_warmup.ckpt", fingerprint),
                        checkpoint_every=s.checkpoint_every, log_every=s.log_every)
        self.game = game = TrainLoop(
            [q_player, g_player], c.rounds, {"qmodel": qmodel, "generator": generator},
            checkpointer=Checkpointer(ctx.workdir, "zaq.ckpt", fingerprint=fingerprint),
            checkpoint_every=s.checkpoint_every, log_every=s.log_every, hooks=[student_bn.on_round])
        with training(qmodel, t_taps.remove, s_taps.remove, student_bn.fold):
            if not game.resume(ctx.log, "resumed_from_round"):
                warmup.play(ctx.log, ctx.progress, f"ZAQ: {c.warmup_rounds} generator warm-up rounds")
                with torch.no_grad():
                    batches = [images(False)[0] for _ in range(c.calib_batches)]
                ranges = calibrate_student(ctx, batches, s.calibration, learn_weight_scales=s.learn_weight_scales,
                                           learn_act_scales=s.learn_act_scales)
                ctx.log["initial_ranges"] = {k: list(v) for k, v in ranges.items()}
            ctx.log["curves"] = game.run_with_progress(
                ctx.progress, f"ZAQ: {c.rounds} rounds of {c.q_steps} Q steps + 1 G step")
        game.checkpointer.clear()
        warmup.checkpointer.clear()
        if self.needs_post_images and not has_batchnorm(ctx.teacher):
            # no BN statistics for a ZeroQ set: reconstruct on what the game was played on
            draws = -(-self.config.recon.images // s.batch_size)
            self.calibration_images = torch.cat([images(False)[0] for _ in range(draws)])[:self.config.recon.images].cpu()
        return qmodel.eval()
