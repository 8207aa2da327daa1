"""The quantized model as a trained student (generative methods: ZAQ, LRQ).

Three pieces every method that fine-tunes the deployable quantized model needs:

- :func:`set_learned_scales`: LSQ-style learning of the quantizer step sizes on or off, with the
  network input's quantizer always fixed (its range is the exact normalized-pixel range);
- :func:`student_param_groups`: the optimizer's parameter groups — weights and biases in one
  group, learned scales (if any) in a second group with their own learning rate and no weight decay;
- :func:`calibrate_student`: the initial activation ranges from a few generated batches
  (scales frozen while calibrating, the input given its exact range), then the learned scales
  switched back on;
- :class:`StudentConfig`: the config fields (and their validation) every such method shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..quant.calibrate import CALIBRATIONS
from ..quant.model import QuantizedModel
from .bnstat import calibrate_on
from .distill import OPTIMIZERS

INPUT_QUANTIZER = "act_quant.input"


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


@dataclass(frozen=True)
class StudentConfig:
    """Config fields shared by the methods that train the quantized model on generated images
    (a method's ``Config`` inherits them; it may redeclare a field to change its default).

    Attributes:
        batch_size: generated images per step (>= 2: the generators' BN uses batch statistics).
        optimizer: the quantized model's optimizer, one of :data:`~.distill.OPTIMIZERS`.
        learn_act_scales, learn_weight_scales: LSQ-style step-size learning (:func:`student_param_groups`).
        scale_lr_ratio: the learned scales' learning rate relative to the weights'.
        calibration, calib_batches: the initial activation ranges (:func:`calibrate_student`) from
            that many generated batches.
        clamp_to_pixels: clamp generated images to the normalized image of [0, 1] pixels.
        checkpoint_every: rounds between checkpoints (0: none).
        log_every: rounds between loss-curve entries in log.json.

    Raises:
        ConfigError: batch_size < 2, an unknown optimizer, scale_lr_ratio <= 0, an unknown
            calibration, calib_batches < 1, checkpoint_every < 0 or log_every < 1.
    """

    batch_size: int = 32
    optimizer: str = "adam"
    learn_act_scales: bool = False
    learn_weight_scales: bool = False
    scale_lr_ratio: float = 1.0
    calibration: str = "mse"
    calib_batches: int = 4
    clamp_to_pixels: bool = True
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self):
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (the generator's BN uses batch statistics), "
                              f"got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scale_lr_ratio <= 0:
            raise ConfigError(f"scale_lr_ratio must be > 0, got {self.scale_lr_ratio}")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.calib_batches < 1:
            raise ConfigError(f"calib_batches must be >= 1, got {self.calib_batches}")
        if self.checkpoint_every < 0 or self.log_every < 1:
            raise ConfigError("checkpoint_every must be >= 0 and log_every >= 1")
