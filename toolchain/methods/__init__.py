"""Zero-shot quantization methods and their shared parts.

Registered methods: ``minmax`` and ``bnstat`` (baselines), ``gznq``, ``zaq``, ``lrq``. Shared parts:
:mod:`.config` (settings: declared on frozen dataclasses, checked in one place, built from a recipe
and overrides), :mod:`.recipes` (the TOML recipes), :mod:`.taps` (feature taps on fx graphs),
:mod:`.bn_stats` (BN-statistics losses), :mod:`.synthesis` (synthetic calibration sets),
:mod:`.images` (the pixel range, its clamp, PNG grids), :mod:`.generators` (image generators and
their sampler), :mod:`.features` (stage-output taps matched between FP and quantized graphs),
:mod:`.relation` (ZAQ's relation transforms), :mod:`.loop` (the one training loop: alternating
players, progress, checkpoints, resume), :mod:`.checkpoint` (checkpoints and RNG states),
:mod:`.distill` (KD/DKD losses, the distillation player), :mod:`.student` (the quantized model's
trainable tensors, initial calibration and training block), :mod:`.margin` (LRQ's angular margin).
"""

from .registry import Method, MethodContext, get_method, list_methods, method_config, register_method  # noqa: F401
