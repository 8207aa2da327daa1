"""Fine-tuning a quantized student by distillation from the FP teacher (GZNQ; reused by LRQ).

A distillation step (:func:`distill_player`, the one player of a :class:`~.loop.TrainLoop`) draws
a fresh batch from a ``sample(batch_size) -> (x, y)`` closure (x: (N, C, H, W) float32 in the
normalized input space; y: (N,) int64 target labels or None), runs the frozen teacher without
gradients and the student with gradients, and minimizes
``objective(student_logits, teacher_logits, y) -> {"loss": scalar, other scalars}``.

- :func:`kd_loss` is Hinton et al.'s (2015) distillation loss,
  T²·KL(softmax(t/T) ‖ softmax(s/T)) averaged over the batch — the default;
- :func:`dkd_loss` is decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022,
  arXiv 2203.08679): KD split into its target-class (TCKD) and non-target-class (NCKD) parts,
  KD = TCKD + (1 − p_t^T)·NCKD (their eq. 7), re-weighted as DKD = α·TCKD + β·NCKD (eq. 8);
  LRQ uses it (:func:`dkd_objective`, or :func:`kd_objective` for its ablation).
- :func:`make_optimizer` builds SGD (momentum, optionally Nesterov) or Adam with a cosine schedule.
- progress (``advance(1, lkd=…)``), loss curves, checkpoints and resume are the loop's.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from .loop import Player

OPTIMIZERS = ("sgd", "adam")
DKD_TARGETS = ("label", "teacher")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), mean over the batch (Hinton et al. 2015).

    Args:
        student_logits, teacher_logits: (N, K) float32.
        temperature: T > 0.

    Returns:
        A scalar float32 tensor (nats), differentiable in ``student_logits``.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def kd_objective(temperature: float = 1.0, ce_weight: float = 0.0) -> Callable:
    """The default ``loss`` closure: kd_loss(T) (+ ``ce_weight``·CE(student, y) when labels are given)."""
    def loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> dict:
        kd = kd_loss(s, t, temperature)
        return with_ce({"loss": kd, "kd": kd}, s, y, ce_weight)
    return loss


def with_ce(out: dict, student_logits: torch.Tensor, y: torch.Tensor | None, ce_weight: float) -> dict:
    """Add ``ce_weight``·CE(student, y) to ``out["loss"]`` (and log it as ``out["ce"]``) when
    ``ce_weight`` > 0 and labels are given; ``out`` unchanged otherwise. Returns ``out``."""
    if ce_weight and y is not None:
        ce = F.cross_entropy(student_logits, y)
        out["loss"] = out["loss"] + ce_weight * ce
        out["ce"] = ce
    return out


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample parts of decoupled KD (Zhao et al., CVPR 2022), at temperature T.

    With p = softmax(z/T), the binary target/non-target split b = [p_t, 1 − p_t] and the
    distribution among the non-target classes p̂_i = p_i / (1 − p_t) (i ≠ t):
    TCKD = T²·KL(b^T ‖ b^S), NCKD = T²·KL(p̂^T ‖ p̂^S), and T²·KL(p^T ‖ p^S) = TCKD + (1 − p_t^T)·NCKD.

    Args:
        student_logits, teacher_logits: (N, K) float32, K ≥ 2 (the teacher's is detached).
        target: (N,) int64 class indices in [0, K).
        temperature: T > 0.

    Returns:
        (tckd (N,), nckd (N,), p_t^T (N,)) float32 tensors (nats, T² included; p_t^T detached).

    Raises:
        ValueError: K < 2 or mismatched shapes.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2 or student_logits.shape[1] < 2 \
            or target.shape != student_logits.shape[:1]:
        raise ValueError(f"dkd needs (N, K >= 2) logits of one shape and (N,) targets, got "
                         f"{tuple(student_logits.shape)}, {tuple(teacher_logits.shape)}, {tuple(target.shape)}")
    t = temperature
    mask = F.one_hot(target, student_logits.shape[1]).bool()
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits.detach() / t, dim=1)

    def binary(logp):  # log [p_t, 1 - p_t], computed stably from the log-probabilities
        lt = logp[mask]
        return torch.stack([lt, torch.logsumexp(logp.masked_fill(mask, float("-inf")), dim=1)], dim=1)
    bs, bt = binary(log_s), binary(log_t)
    tckd = (bt.exp() * (bt - bs)).sum(1) * (t * t)
    # p̂ over the non-target classes: a softmax with the target logit masked out
    ns = F.log_softmax((student_logits / t).masked_fill(mask, float("-inf")), dim=1)
    nt = F.log_softmax((teacher_logits.detach() / t).masked_fill(mask, float("-inf")), dim=1)
    nckd = (nt.exp() * (nt - ns)).masked_fill(mask, 0.0).sum(1) * (t * t)
    return tckd, nckd, bt[:, 0].exp()


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """α·TCKD + β·NCKD averaged over the batch (DKD, Zhao et al. CVPR 2022, eq. 8; their CIFAR-100
    defaults α = 1, β = 8, T = 4). Shapes and errors as :func:`dkd_terms`; returns a scalar (nats)."""
    tckd, nckd, _ = dkd_terms(student_logits, teacher_logits, target, temperature)
    return (alpha * tckd + beta * nckd).mean()


def dkd_objective(alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, ce_weight: float = 0.0,
                  target: str = "label") -> Callable:
    """A ``loss`` closure: DKD (+ ``ce_weight``·CE(student, y)). The target class is the given
    label y (``target="label"``) or the teacher's top-1 class (``"teacher"``, also used when y is None)."""
    if target not in DKD_TARGETS:
        raise ConfigError(f"dkd target must be one of {DKD_TARGETS}, got {target!r}")

    def loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> dict:
        cls = t.detach().argmax(1) if target == "teacher" or y is None else y
        tckd, nckd, _ = dkd_terms(s, t, cls, temperature)
        tckd, nckd = tckd.mean(), nckd.mean()
        return with_ce({"loss": alpha * tckd + beta * nckd, "tckd": tckd, "nckd": nckd}, s, y, ce_weight)
    return loss


def make_optimizer(params, name: str, lr: float, steps: int, momentum: float = 0.9, weight_decay: float = 0.0,
                   *, nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999)):
    """(optimizer, cosine LR scheduler over ``steps`` steps) for ``name`` in :data:`OPTIMIZERS`.

    ``params`` may be tensors or parameter-group dicts (a group's own ``lr``/``weight_decay`` win).
    ``nesterov`` applies to SGD (needs momentum > 0), ``betas`` to Adam.
    Raises ConfigError for an unknown name or Nesterov without momentum.
    """
    params = list(params)
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise ConfigError("Nesterov SGD needs momentum > 0")
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas)
    else:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))


def distill_player(teacher: nn.Module, student: nn.Module, sample: Callable, objective: Callable, batch_size: int,
                   params, optimizer: torch.optim.Optimizer, scheduler=None, name: str = "student") -> Player:
    """Distillation as the one player of a :class:`~.loop.TrainLoop` (see the module docstring).

    Args:
        teacher: the frozen FP model (eval mode); run without gradients.
        student: the module being trained (e.g. the :class:`~toolchain.quant.model.QuantizedModel`).
        sample: ``sample(batch_size) -> (x, y)``, a fresh batch per call (x: (N, C, H, W) float32,
            y: (N,) int64 or None).
        objective: ``objective(student_logits, teacher_logits, y) -> {"loss": scalar, …}``
            (:func:`kd_objective`, :func:`dkd_objective`).
        batch_size: images per step.
        params, optimizer, scheduler: what a step updates (the scheduler stepped once per step, or None).
    """
    def loss() -> dict:
        x, y = sample(batch_size)
        with torch.no_grad():
            t_logits = teacher(x)
        return objective(student(x), t_logits, y)
    return Player(name, loss, list(params), optimizer, scheduler)
