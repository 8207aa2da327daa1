"""Quantizer modules (names say dtype, granularity and scale type, as Brevitas does).

- :class:`IntWeightPerChannelFloat`: signed, symmetric, narrow range
  (qmin = -qmax, e.g. 4-bit → [-7, 7]), one float32 scale per output channel, zero_point 0.
- :class:`UintActPerTensorFloat`: unsigned, zero_point 0, one float32 scale — for
  tensors known to be >= 0 (after ReLU/ReLU6).
- :class:`ShiftedUintActPerTensorFloat`: unsigned codes with an integer zero_point
  (asymmetric), one float32 scale — for every other activation (network input, residual
  branches before the add, logits).

Activation codes of any width <= 8 live in a uint8 container: qmin = 0,
qmax = 2**bits - 1 (QDQ export writes QuantizeLinear(uint8) → Clip(0, qmax) →
DequantizeLinear for bits < 8).

Each quantizer implements one :class:`~.spec.QuantSpec` (``q.spec``; ``bits``, ``qmin`` and ``qmax``
read it); :func:`quantizer_from_spec` builds the quantizer a spec asks for, by the registry
:data:`QUANTIZERS` (spec kind → class), as the rewrite does for every tensor role of the scheme.

Every quantizer has a ``mode``: ``"quant"`` (fake-quantize), or ``"float"``
(pass the input through, for the FP pass of calibration and for teacher runs).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..core.errors import ConfigError
from .fake_quant import channel_view, fake_quantize, quantize
from .spec import QuantSpec, shifted_act_spec, unsigned_act_spec, weight_spec

#: smallest scale a quantizer may hold (keeps x/scale finite)
MIN_SCALE = 1e-8

MODES = ("quant", "float")


#: spec kind (:attr:`QuantSpec.kind`: dtype, per-channel, zero-point rule) → quantizer class
QUANTIZERS: dict[tuple[str, bool, str], type["Quantizer"]] = {}


def register_quantizer(cls: type["Quantizer"]) -> type["Quantizer"]:
    """Class decorator: ``cls`` implements the specs of kind ``cls.KIND``."""
    QUANTIZERS[cls.KIND] = cls
    return cls


def quantizer_from_spec(spec: QuantSpec, num_channels: int | None = None) -> "Quantizer":
    """A fresh quantizer (scale 1, zero_point 0, mode "quant") implementing ``spec``.

    Args:
        spec: the tensor's grid.
        num_channels: the size of dimension ``spec.axis`` of the tensor (per-channel specs only).

    Raises:
        ConfigError: no registered quantizer implements ``spec`` (or a per-channel spec without
            ``num_channels``).
    """
    cls = QUANTIZERS.get(spec.kind)
    if cls is None:
        raise ConfigError(f"no quantizer implements {spec}",
                          f"registered kinds (dtype, per_channel, zero_point): {', '.join(map(str, QUANTIZERS))}")
    return cls.from_spec(spec, num_channels)


class Quantizer(nn.Module):
    """Shared state: the spec (bit width, integer range), scale (Parameter), zero_point (buffer), mode.

    Subclasses set ``KIND`` (the :attr:`QuantSpec.kind` they implement) and ``_build`` (spec →
    instance) and are registered with :func:`register_quantizer`. The spec is fixed for the
    quantizer's life: a different grid is a different quantizer.
    """

    KIND: tuple[str, bool, str]

    def __init__(self, spec: QuantSpec, scale_shape: tuple[int, ...]):
        super().__init__()
        self.spec = spec
        self.scale = nn.Parameter(torch.ones(scale_shape), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(scale_shape))
        self.mode = "quant"

    @classmethod
    def from_spec(cls, spec: QuantSpec, num_channels: int | None = None) -> "Quantizer":
        """A quantizer of class ``cls`` for ``spec``.

        Raises:
            ConfigError: ``cls`` implements another grid of this kind (e.g. not narrow range).
        """
        q = cls._build(spec, num_channels)
        if q.spec != spec:
            raise ConfigError(f"{cls.__name__} implements {q.spec}, not {spec}",
                              "register a quantizer for this spec with register_quantizer")
        return q

    @classmethod
    def _build(cls, spec: QuantSpec, num_channels: int | None) -> "Quantizer":
        raise NotImplementedError

    # integer range ---------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def qmin(self) -> int:
        return self.spec.qmin

    @property
    def qmax(self) -> int:
        return self.spec.qmax

    def effective_scale(self) -> torch.Tensor:
        """The scale actually used (clamped positive); export writes exactly this tensor."""
        return self.scale.clamp_min(MIN_SCALE)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def learn_scale(self, flag: bool = True) -> None:
        """Make the scale a trainable parameter (LSQ, Esser et al. 2020) or freeze it."""
        self.scale.requires_grad_(flag)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, qmin={self.qmin}, qmax={self.qmax}, mode={self.mode}"


@register_quantizer
class IntWeightPerChannelFloat(Quantizer):
    """Per-output-channel symmetric narrow-range weight quantizer.

    Args:
        bits: 2..8. Codes in [-(2**(bits-1)-1), 2**(bits-1)-1]; stored as int8 on export.
        num_channels: number of output channels C (size of weight dim ``axis``).
        axis: the per-channel axis of the weight (0 for Conv (Cout,Cin/g,kh,kw) and Linear (out,in)).

    ``forward(weight)`` returns the fake-quantized weight, same shape/dtype (float32).
    """

    KIND = ("int8", True, "zero")

    def __init__(self, bits: int, num_channels: int, axis: int = 0):
        super().__init__(weight_spec(bits, axis), (num_channels,))
        self.axis = axis

    @classmethod
    def _build(cls, spec: QuantSpec, num_channels: int | None) -> "IntWeightPerChannelFloat":
        if num_channels is None:
            raise ConfigError(f"a per-channel spec needs the size of axis {spec.axis}",
                              "pass num_channels to quantizer_from_spec")
        return cls(spec.bits, num_channels, axis=spec.axis)

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        """Min-max init: ``scale[c] = max|w[c]| / qmax`` (per output channel)."""
        dims = [d for d in range(weight.ndim) if d != self.axis]
        amax = weight.detach().abs().amax(dim=dims)
        self.scale.copy_((amax / self.qmax).clamp_min(MIN_SCALE))

    def _view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return channel_view(t, ndim, self.axis)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return weight
        s = self._view(self.effective_scale(), weight.ndim)
        return fake_quantize(weight, s, torch.zeros_like(s), self.qmin, self.qmax)

    @torch.no_grad()
    def int_repr(self, weight: torch.Tensor) -> torch.Tensor:
        """int8 codes of ``weight`` (same shape) — what QDQ export stores."""
        s = self._view(self.effective_scale(), weight.ndim)
        return quantize(weight, s, torch.zeros_like(s), self.qmin, self.qmax).to(torch.int8)


class ActPerTensorFloat(Quantizer):
    """Per-tensor activation quantizer in a uint8 container: codes in [0, 2**bits - 1].

    The concrete classes fix the zero-point rule (``make_spec``: bits → their spec):
    :class:`UintActPerTensorFloat` (0) and :class:`ShiftedUintActPerTensorFloat` (from the range).
    """

    #: bits → the spec of the class (set by each concrete class)
    make_spec: Callable[[int], QuantSpec]

    def __init__(self, bits: int):
        super().__init__(self.make_spec(bits), ())

    @classmethod
    def _build(cls, spec: QuantSpec, num_channels: int | None) -> "ActPerTensorFloat":
        return cls(spec.bits)

    @property
    def unsigned_input(self) -> bool:
        """True when the zero_point is fixed at 0 (tensor known to be >= 0)."""
        return self.spec.fixed_zero_point

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        """Set scale/zero_point so the representable range covers [lo, hi] (0 is always included).

        Unsigned: ``scale = hi / qmax``, zero_point 0. Shifted: ``scale = (hi - lo) / qmax``,
        ``zero_point = clamp(round(-lo / scale), 0, qmax)``, so 0 is exactly representable.
        """
        lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
        if self.unsigned_input:
            lo = 0.0
        span = max(hi - lo, MIN_SCALE * self.qmax)
        scale = span / self.qmax
        zp = 0.0 if self.unsigned_input else min(max(round(-lo / scale), 0), self.qmax)
        self.scale.copy_(torch.tensor(scale, dtype=torch.float32))
        self.zero_point.copy_(torch.tensor(float(zp)))

    def clamp_is_redundant(self, lo: float | None, hi: float | None) -> bool:
        """True when clamping the input to [lo, hi] (None: unbounded) cannot change a code.

        That holds when this quantizer maps ``lo`` to code 0 and ``hi`` to code ``qmax`` with a
        margin (QuantizeLinear saturates, and a sub-8-bit Clip follows the Q), so values beyond
        the bounds land on the same code with or without the clamp. The export then drops the
        clamp, and the integer-exact simulation lets the fused kernel's saturation do it.
        """
        if self.mode != "quant":
            return False
        import numpy as np
        s = float(np.float32(self.effective_scale().detach().cpu().numpy()))
        zp = float(self.zero_point)
        margin = 1e-3
        ok_lo = lo is None or np.float32(lo) / np.float32(s) + zp <= 0.5 - margin
        ok_hi = hi is not None and np.float32(hi) / np.float32(s) + zp >= self.qmax - 0.5 + margin
        return bool(ok_lo and (ok_hi or hi is None))

    def range(self) -> tuple[float, float]:
        """The representable [lo, hi] in float units."""
        s = float(self.effective_scale())
        zp = float(self.zero_point)
        return (self.qmin - zp) * s, (self.qmax - zp) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return x
        return fake_quantize(x, self.effective_scale(), self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def int_repr(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 codes of ``x`` (same shape)."""
        return quantize(x, self.effective_scale(), self.zero_point, self.qmin, self.qmax).to(torch.uint8)


@register_quantizer
class UintActPerTensorFloat(ActPerTensorFloat):
    """Unsigned activation quantizer with zero_point 0 (after ReLU/ReLU6): codes [0, 2**bits-1]."""

    KIND = ("uint8", False, "zero")
    make_spec = staticmethod(unsigned_act_spec)


@register_quantizer
class ShiftedUintActPerTensorFloat(ActPerTensorFloat):
    """Asymmetric activation quantizer: uint codes [0, 2**bits-1] with an integer zero_point."""

    KIND = ("uint8", False, "shifted")
    make_spec = staticmethod(shifted_act_spec)


def clamp_absorbed(node, module_of) -> bool:
    """Whether a ReLU/ReLU6/clamp fx ``node`` can be dropped: every user is an activation quantizer
    (``module_of(user)`` gives its module) whose saturation does the clamp
    (:meth:`ActPerTensorFloat.clamp_is_redundant`). The export drops such a clamp and the
    integer-exact simulation lets the fused kernel's saturation do it, so both ask this one check.
    """
    from ..graph import ops
    lo, hi = ops.clamp_bounds(node)
    users = list(node.users)
    return bool(users) and all(
        u.op == "call_module" and isinstance(module_of(u), ActPerTensorFloat)
        and module_of(u).clamp_is_redundant(lo, hi) for u in users)
