"""Deployment targets: which integer ranges a CPU's 8-bit kernels compute exactly.

torch-free (the verifier imports it on the device).

onnxruntime's u8×s8 kernels on x86-64 CPUs without VNNI (AVX2, and AVX-512 without
VNNI) multiply uint8 activation codes by int8 weight codes with ``vpmaddubsw``, which
adds each *pair* of products in int16 with signed saturation before widening to int32
(MLAS ``MlasGemmU8S8KernelAvx2``; its depthwise and ``QGemm`` paths share it). With
codes up to 255 and ±127 a pair reaches 64,770 > 32,767, so the sum saturates and the
result depends on the CPU. VNNI (``vpdpbusd``), AMX and ARM64's NEON/dot-product kernels
widen every product to int32 first and are exact.

A scheme is *int16-pair safe* when, for every integer layer, ``2 · qmax_act · qmax_weight
≤ 32,767`` where ``qmax_act`` is the largest activation code the layer can see (the raw
uint8 code, zero point included: MLAS corrects for the zero point after the sum) and
``qmax_weight`` the largest |weight code|. Such a model computes the same integers on
every CPU.

Targets:

- ``portable`` (default): int16-pair safe. A layer whose ranges would saturate gets
  7-bit weight codes (narrow range [−63, 63]; with 8-bit activations 2·255·63 = 32,130).
- ``x86-vnni``: full 8-bit ranges, for x86 CPUs with AVX512-VNNI / AVX-VNNI / AMX.
- ``arm64``: full 8-bit ranges, for ARM64 CPUs (NEON widens products to int32).

Sub-8-bit layers are already safe (e.g. W4A4: 2·15·7 = 210); the rule is the same check.
Depthwise convolutions (one input and one output channel per group) are exempt: MLAS runs them
with a kernel that widens each product to int32 on every ISA (checked on an emulated AVX2 CPU,
``examples/avx2_emulated.py``), so they keep full 8-bit weights on every target; grouped and
regular convolutions and Gemm/MatMul go through the pairwise u8×s8 kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from .core.errors import ConfigError

#: largest int16 value: the bound of a saturating pair sum (vpmaddubsw)
INT16_MAX = 32767


@dataclass(frozen=True)
class Target:
    """A deployment target of the quantization scheme.

    Attributes:
        name: the ``--target`` value.
        description: one line for ``--help`` and ``zqtool list``.
        int16_pair_safe: whether every integer layer must satisfy
            ``2 · qmax_act · qmax_weight ≤ 32,767`` (see the module docstring).
        narrow: what a layer that would break the bound narrows: ``"weight"`` (its weight codes,
            8 → 7 bits) or ``"act"`` (the activation codes it reads, 8 → 7 bits, for every consumer);
            a key of :data:`NARROWINGS`.
        fused_add: whether a residual Add of two quantized tensors may run as onnxruntime's
            QLinearAdd. QLinearAdd requantizes in float32 on x86 and in fixed point on ARM64, so the
            same file gives different codes on the two (measured: ResNet-20 W8A8, 4 of 1,017 top-1
            flips on an emulated Cortex-A72); without it the Add is written as ONNX ``Sum`` (not fused:
            one IEEE float32 addition of the dequantized inputs, then QuantizeLinear) — the same bits
            on every CPU.

    Raises:
        ConfigError: ``narrow`` is not a key of :data:`NARROWINGS`.
    """

    name: str
    description: str
    int16_pair_safe: bool
    narrow: str = "weight"
    fused_add: bool = True

    def __post_init__(self):
        if self.narrow not in NARROWINGS:
            raise ConfigError(f"target {self.name!r}: unknown narrow={self.narrow!r}",
                              f"choose one of {', '.join(NARROWINGS)}")

    def layer_bits(self, weight_bits: int, act_bits: int, *, depthwise: bool = False) -> tuple[int, int]:
        """(weight bits, input activation bits) of a layer on this target, from what its role asks
        (``depthwise``: a depthwise convolution, whose kernel has no int16 pair sums). On an
        int16-pair-safe target a layer that could saturate narrows by :data:`NARROWINGS`."""
        if not self.int16_pair_safe or depthwise or \
                pair_sum_safe(2 ** act_bits - 1, 2 ** (weight_bits - 1) - 1):
            return int(weight_bits), int(act_bits)
        return NARROWINGS[self.narrow](int(weight_bits), int(act_bits))


def is_depthwise(out_channels: int, in_channels_per_group: int, groups: int) -> bool:
    """Whether a convolution is depthwise (one input and one output channel per group): MLAS's
    depthwise kernel widens products to int32, so it cannot saturate."""
    return in_channels_per_group == 1 and groups == out_channels and groups > 1


def pair_sum_bound(qmax_act: int, qmax_weight: int) -> int:
    """Largest |sum of two products| of uint8 codes ≤ ``qmax_act`` and int8 codes ≤ ``qmax_weight``."""
    return 2 * int(qmax_act) * int(qmax_weight)


def pair_sum_safe(qmax_act: int, qmax_weight: int) -> bool:
    """True when a saturating int16 pair sum (vpmaddubsw) cannot saturate for these ranges."""
    return pair_sum_bound(qmax_act, qmax_weight) <= INT16_MAX


def safe_weight_bits(weight_bits: int, act_bits: int) -> int:
    """The largest weight bit width ≤ ``weight_bits`` (narrow range, qmax = 2**(b-1) − 1) whose
    codes are pair-sum safe with ``act_bits``-bit unsigned activations (qmax = 2**b − 1)."""
    return _widest(weight_bits, lambda w: pair_sum_safe(2 ** act_bits - 1, 2 ** (w - 1) - 1))


def safe_act_bits(weight_bits: int, act_bits: int) -> int:
    """The largest unsigned activation width ≤ ``act_bits`` whose codes are pair-sum safe with
    ``weight_bits``-bit narrow-range weights."""
    return _widest(act_bits, lambda a: pair_sum_safe(2 ** a - 1, 2 ** (weight_bits - 1) - 1))


def _widest(bits: int, safe) -> int:
    """The largest width ≤ ``bits`` (down to 2) for which ``safe(width)`` holds."""
    b = int(bits)
    while b > 2 and not safe(b):
        b -= 1
    return b


#: ``Target.narrow`` → (weight bits, act bits) → the pair-sum-safe (weight bits, act bits)
NARROWINGS = {
    "weight": lambda w, a: (safe_weight_bits(w, a), a),
    "act": lambda w, a: (w, safe_act_bits(w, a)),
}

TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


PORTABLE = register_target(Target(
    "portable", "exact on every x86-64 and ARM64 CPU (7-bit weight codes where 8-bit ones could saturate "
    "onnxruntime's AVX2 kernels; residual adds in float, which ARM's QLinearAdd rounds differently)", True,
    fused_add=False))
register_target(Target("x86-vnni", "full 8-bit ranges for x86-64 CPUs with AVX512-VNNI, AVX-VNNI or AMX", False))
register_target(Target("arm64", "full 8-bit ranges for ARM64 CPUs (NEON, dot-product)", False))
DEFAULT_TARGET = PORTABLE.name


def get_target(name: str) -> Target:
    """The registered target ``name``. Raises ConfigError listing the registered ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown --target {name!r}", f"choose one of {', '.join(TARGETS)}") from None
