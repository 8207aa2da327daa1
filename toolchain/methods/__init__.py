"""Zero-shot quantization methods and their shared parts.

Registered methods: ``minmax`` and ``bnstat`` (baselines). Shared parts:
:mod:`.taps` (feature taps on fx graphs), :mod:`.bn_stats` (BN-statistics losses),
:mod:`.synthesis` (synthetic calibration sets), :mod:`.recipes` (TOML recipes).
"""

from .registry import Method, MethodContext, get_method, list_methods, register_method  # noqa: F401
