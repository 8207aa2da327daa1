"""The quantized model as a trained student (ZAQ, LRQ, GZNQ's fine-tuning).

The pieces every method that fine-tunes the deployable quantized model needs:

- :func:`set_learned_scales`: LSQ-style learning of the quantizer step sizes on or off, with the
  network input's quantizer always fixed (its range is the exact normalized-pixel range);
- :func:`student_param_groups`: the optimizer's parameter groups — weights and biases in one
  group, learned scales (if any) in a second group with their own learning rate and no weight decay;
- :func:`calibrate_student`: the initial activation ranges from a few generated batches
  (scales frozen while calibrating, the input given its exact range), then the learned scales
  switched back on;
- :func:`training`: the block the training runs in, which freezes the scales again however it ends;
- :class:`StudentBN`: ``bn_mode`` — train on the folded deploy model (``"folded"``) or with each
  folded BN back in the loop, frozen after ``bn_freeze`` of the schedule and folded again at the end
  (``"qat"``; Jacob et al. 2018 sec. 3.2, Krishnamoorthi 2018 sec. 3.2; :mod:`toolchain.quant.bn_qat`);
- :class:`StudentConfig`: the settings of that training, a group every such method's config holds.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..quant import bn_qat
from ..quant.calibrate import CALIBRATIONS
from ..quant.model import QuantizedModel
from .bnstat import calibrate_on
from .config import Settings, setting
from .distill import OPTIMIZERS

INPUT_QUANTIZER = "act_quant.input"
BN_MODES = ("folded", "qat")


def set_learned_scales(qmodel: QuantizedModel, weights: bool, acts: bool) -> None:
    """Make the weight and/or activation quantizer scales trainable (or freeze them); the network
    input's quantizer (``act_quant.input``, if present) stays frozen either way."""
    qmodel.learn_scales(weights=weights, acts=acts)
    aq = qmodel.act_quantizers()
    if INPUT_QUANTIZER in aq:
        aq[INPUT_QUANTIZER].learn_scale(False)


def student_param_groups(qmodel: QuantizedModel, lr: float, *, learn_weight_scales: bool = False,
                         learn_act_scales: bool = False, scale_lr_ratio: float = 0.01
                         ) -> tuple[list[dict], list[torch.Tensor]]:
    """Switch scale learning as asked and build the optimizer's parameter groups.

    Args:
        qmodel: the quantized model (its weights and biases require grad).
        lr: the weights' learning rate.
        learn_weight_scales, learn_act_scales: LSQ-style step-size learning (input excluded).
        scale_lr_ratio: the scales' learning rate relative to ``lr``.

    Returns:
        (groups, params): ``[{"params": weights}, {"params": scales, "lr": lr·ratio,
        "weight_decay": 0.0}]`` (the second only when some scale learns) and the flat list
        weights + scales a step differentiates.
    """
    set_learned_scales(qmodel, weights=learn_weight_scales, acts=learn_act_scales)
    scales = [q.scale for q in qmodel.quantizers() if q.scale.requires_grad]
    scale_ids = {id(s) for s in scales}
    weights = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in scale_ids]
    groups = [{"params": weights}]
    if scales:
        groups.append({"params": scales, "lr": lr * scale_lr_ratio, "weight_decay": 0.0})
    return groups, weights + scales


def calibrate_student(ctx, batches: list[torch.Tensor], method: str, *, learn_weight_scales: bool = False,
                      learn_act_scales: bool = False) -> dict:
    """Initial activation ranges of ``ctx.qmodel`` from ``batches`` (each (B, C, H, W) float32,
    normalized input space): scales frozen, exact input range, ``method`` calibration of every
    other activation quantizer (:func:`~.bnstat.calibrate_on`), then scale learning restored.

    Returns:
        ``{quantizer name: (lo, hi)}`` as :func:`~toolchain.quant.calibrate.calibrate`.
    Raises:
        ConfigError: an unknown calibration method.
    """
    ctx.qmodel.learn_scales(weights=False, acts=False)  # calibration writes plain values
    try:
        return calibrate_on(ctx, torch.cat(batches), method, batches[0].shape[0])
    finally:
        set_learned_scales(ctx.qmodel, weights=learn_weight_scales, acts=learn_act_scales)


@contextlib.contextmanager
def training(qmodel: QuantizedModel, *cleanups):
    """A block that trains ``qmodel``: train mode inside; on the way out, normally or not, every
    ``cleanups`` callable (e.g. removing feature taps) is called and all quantizer scales are
    frozen again (the model is exported as it is). Yields ``qmodel``."""
    qmodel.train()
    try:
        yield qmodel
    finally:
        for cleanup in cleanups:
            cleanup()
        set_learned_scales(qmodel, weights=False, acts=False)


@dataclass(frozen=True)
class StudentConfig(Settings):
    """How a method trains the quantized model (the ``student`` group of its ``Config``).

    Attributes:
        batch_size: images per step (>= 2: the generators' BN uses batch statistics).
        optimizer: the quantized model's optimizer, one of :data:`~.distill.OPTIMIZERS`.
        learn_act_scales, learn_weight_scales: LSQ-style step-size learning (:func:`student_param_groups`).
        scale_lr_ratio: the learned scales' learning rate relative to the weights' (> 0).
        calibration: the initial activation ranges' calibration (:func:`calibrate_student`), one of
            :data:`~toolchain.quant.calibrate.CALIBRATIONS`.
        checkpoint_every: steps (rounds) between checkpoints (0: none).
        log_every: steps (rounds) between loss-curve entries in log.json (>= 1).
        bn_mode: "folded" (train the deploy model as it is) or "qat" (BN in the loop with batch
            statistics, :class:`StudentBN`).
        bn_freeze: with "qat", the share of the rounds after which BN is frozen (its deploy form;
            1: only at the end).
        bn_momentum: with "qat", the running statistics' update rate.
    """

    batch_size: int = setting(32, ge=2)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    learn_act_scales: bool = False
    learn_weight_scales: bool = False
    scale_lr_ratio: float = setting(1.0, gt=0)
    calibration: str = setting("mse", choices=CALIBRATIONS)
    checkpoint_every: int = setting(100, ge=0)
    log_every: int = setting(10, ge=1)
    bn_mode: str = setting("folded", choices=BN_MODES)
    bn_freeze: float = setting(0.5, ge=0, le=1)
    bn_momentum: float = setting(0.1, gt=0, le=1)


class StudentBN:
    """The student's BN while it trains, as ``cfg.bn_mode`` says.

    ``"folded"``: nothing (the BN stays folded in the weights). ``"qat"``: every layer whose BN was
    folded gets it back (:func:`toolchain.quant.bn_qat.attach_bn_qat`) when this is built — build
    it before :func:`student_param_groups`, so the BN's γ and β train with the weights, and before
    the loop resumes, so a checkpoint's BN state loads; :meth:`on_round` (a
    :class:`~.loop.TrainLoop` hook) freezes it from round ``⌈bn_freeze · rounds⌉`` on, and
    :meth:`fold` (a :func:`training` cleanup) folds it with the running statistics.

    Args:
        qmodel: the student.
        cfg: its training settings.
        rounds: the rounds (steps) of the loop the hook is given to.
    """

    def __init__(self, qmodel: QuantizedModel, cfg: "StudentConfig", rounds: int):
        self.qmodel, self.mode = qmodel, cfg.bn_mode
        self.freeze_round = math.ceil(cfg.bn_freeze * rounds)
        self.layers = bn_qat.attach_bn_qat(qmodel.layers(), cfg.bn_momentum) if self.mode == "qat" else []

    def on_round(self, round_index: int) -> None:
        """Freeze the BN (its deploy form) once ``round_index`` reaches the freeze round."""
        if self.layers and round_index >= self.freeze_round:
            bn_qat.freeze_bn_qat(self.qmodel.layers())

    def fold(self) -> None:
        """Fold the BN into the layers (weights, per-channel weight scales, biases) and detach it."""
        if self.layers:
            bn_qat.fold_bn_qat(self.qmodel.layers())
            self.layers = []

    def log(self) -> dict:
        """What the run log records: the mode, the layers with BN in the loop, the freeze round."""
        return {"mode": self.mode, "layers": len(self.layers), "freeze_round": self.freeze_round}
