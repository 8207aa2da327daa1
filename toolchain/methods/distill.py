"""Fine-tuning a quantized student by distillation from the FP teacher (GZNQ; reused by LRQ).

The loop draws a fresh batch from a ``sample(batch_size) -> (x, y)`` closure each step
(x: (N, C, H, W) float32 in the normalized input space; y: (N,) int64 target labels or
None), runs the frozen teacher without gradients and the student with gradients, and
minimizes ``loss(student_logits, teacher_logits, y) -> {"loss": scalar, other scalars}``.

- :func:`kd_loss` is Hinton et al.'s (2015) distillation loss,
  T²·KL(softmax(t/T) ‖ softmax(s/T)) averaged over the batch — the default;
  LRQ plugs its decoupled KD (Zhao et al., CVPR 2022) in as another ``loss``.
- :func:`make_optimizer` builds SGD (momentum, Nesterov off) or Adam with a cosine schedule.
- :class:`DistillLoop` reports progress (``advance(1, lkd=…)``), records loss curves every
  ``log_every`` steps and checkpoints every ``checkpoint_every`` steps through a
  :class:`~.checkpoint.Checkpointer` (student, optimizer, scheduler, step, curves, RNG
  states); with a checkpoint present it continues to the same final state as an
  uninterrupted run.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .checkpoint import Checkpointer, Resumable

OPTIMIZERS = ("sgd", "adam")


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
        out = {"loss": kd, "kd": kd}
        if ce_weight and y is not None:
            ce = F.cross_entropy(s, y)
            out["loss"] = kd + ce_weight * ce
            out["ce"] = ce
        return out
    return loss


def make_optimizer(params, name: str, lr: float, steps: int, momentum: float = 0.9, weight_decay: float = 0.0):
    """(optimizer, cosine LR scheduler over ``steps`` steps) for ``name`` in :data:`OPTIMIZERS`."""
    params = list(params)
    if name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))


class DistillLoop(Resumable):
    """Teacher → student distillation steps (see module docstring).

    Args:
        student: the module being trained (e.g. the :class:`~toolchain.quant.model.QuantizedModel`).
        teacher: the frozen FP model (eval mode).
        sample: ``sample(batch_size) -> (x, y)``, a fresh batch per call.
        loss: ``loss(student_logits, teacher_logits, y) -> {"loss": scalar, …}``.
        params: the parameters a step updates.
        optimizer, scheduler: over ``params`` (scheduler stepped once per step, or None).
        steps, batch_size: the schedule.
        checkpointer: where checkpoints go (None: none).
        checkpoint_every: steps between checkpoints (0: never).
        log_every: steps between loss-curve entries (the last step is always recorded).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, sample: Callable, loss: Callable, params,
                 optimizer: torch.optim.Optimizer, scheduler=None, *, steps: int, batch_size: int,
                 checkpointer: Checkpointer | None = None, checkpoint_every: int = 0, log_every: int = 10):
        if steps < 0 or batch_size < 1 or checkpoint_every < 0 or log_every < 1:
            raise ValueError("steps/checkpoint_every must be >= 0, batch_size and log_every >= 1")
        self.student, self.teacher, self.sample, self.loss = student, teacher, sample, loss
        self.params, self.optimizer, self.scheduler = list(params), optimizer, scheduler
        self.steps, self.batch_size = steps, batch_size
        self.checkpointer = checkpointer or Checkpointer(None)
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.step = 0
        self.curves: dict[str, list] = {"step": []}
        self.resumed_from: int | None = None

    def state_dict(self) -> dict:
        return {"step": self.step, "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "curves": self.curves}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.curves = {k: list(v) for k, v in state["curves"].items()}

    @property
    def position(self) -> int:
        return self.step

    def after_step(self, step: int, losses: dict) -> None:
        """Hook called after every optimizer step (tests monkeypatch it)."""

    def run(self, progress=None) -> dict[str, list]:
        """Do the remaining steps; returns the loss curves (``step`` plus one list per loss key)."""
        if progress is not None and self.step:
            progress.advance(self.step)
        while self.step < self.steps:
            s = self.step
            x, y = self.sample(self.batch_size)
            with torch.no_grad():
                t_logits = self.teacher(x)
            self.optimizer.zero_grad(set_to_none=True)
            losses = self.loss(self.student(x), t_logits, y)
            grads = torch.autograd.grad(losses["loss"], self.params, allow_unused=True)
            for p, g in zip(self.params, grads):
                p.grad = g
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            values = {k: float(v.detach()) for k, v in losses.items()}
            self.after_step(s, values)
            self.step = s + 1
            if s % self.log_every == 0 or self.step == self.steps:
                self.curves["step"].append(s)
                for k, v in values.items():
                    self.curves.setdefault(k, []).append(v)
            if progress is not None:
                progress.advance(1, **{f"l{k}": round(v, 4) for k, v in values.items() if k != "loss"})
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.step < self.steps:
                self.checkpointer.save(self.state_dict())
        for p in self.params:
            p.grad = None
        return self.curves
