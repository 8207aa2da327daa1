"""Zero-shot quantization methods and their shared parts.

Registered methods: ``minmax`` and ``bnstat`` (baselines), ``gznq``, ``zaq``, ``lrq``. Shared parts:
:mod:`.taps` (feature taps on fx graphs), :mod:`.bn_stats` (BN-statistics losses),
:mod:`.synthesis` (synthetic calibration sets), :mod:`.recipes` (TOML recipes),
:mod:`.generators` (image generators), :mod:`.features` (stage-output taps matched between
FP and quantized graphs), :mod:`.relation` (ZAQ's relation transforms), :mod:`.adversarial`
(the max–min loop), :mod:`.checkpoint` (checkpoints and RNG states for resume),
:mod:`.distill` (KD/DKD losses, the distillation loop), :mod:`.student` (the quantized model's
trainable tensors and initial calibration), :mod:`.margin` (LRQ's angular margin).
"""

from .registry import Method, MethodContext, get_method, list_methods, register_method  # noqa: F401
