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

Every quantizer has a ``mode``: ``"quant"`` (fake-quantize), or ``"float"``
(pass the input through, for the FP pass of calibration and for teacher runs).
"""

from __future__ import annotations

import torch
from torch import nn

from .fake_quant import channel_view, fake_quantize, quantize

#: smallest scale a quantizer may hold (keeps x/scale finite)
MIN_SCALE = 1e-8

MODES = ("quant", "float")


class _Quantizer(nn.Module):
    """Shared state: bit width, integer range, scale (Parameter), zero_point (buffer), mode."""

    signed: bool = False

    def __init__(self, bits: int, scale_shape: tuple[int, ...]):
        super().__init__()
        self.bits = int(bits)
        self.scale = nn.Parameter(torch.ones(scale_shape), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(scale_shape))
        self.mode = "quant"

    # integer range ---------------------------------------------------------
    @property
    def qmin(self) -> int:
        raise NotImplementedError

    @property
    def qmax(self) -> int:
        raise NotImplementedError

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


class IntWeightPerChannelFloat(_Quantizer):
    """Per-output-channel symmetric narrow-range weight quantizer.

    Args:
        bits: 2..8. Codes in [-(2**(bits-1)-1), 2**(bits-1)-1]; stored as int8 on export.
        num_channels: number of output channels C (size of weight dim ``axis``).
        axis: the per-channel axis of the weight (0 for Conv (Cout,Cin/g,kh,kw) and Linear (out,in)).

    ``forward(weight)`` returns the fake-quantized weight, same shape/dtype (float32).
    """

    signed = True

    def __init__(self, bits: int, num_channels: int, axis: int = 0):
        super().__init__(bits, (num_channels,))
        self.axis = axis

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        return -self.qmax

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


class ActPerTensorFloat(_Quantizer):
    """Per-tensor activation quantizer in a uint8 container: codes in [0, 2**bits - 1]."""

    #: True when the zero_point is fixed at 0 (tensor known to be >= 0)
    unsigned_input: bool = True

    def __init__(self, bits: int):
        super().__init__(bits, ())

    @property
    def qmin(self) -> int:
        return 0

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

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


class UintActPerTensorFloat(ActPerTensorFloat):
    """Unsigned activation quantizer with zero_point 0 (after ReLU/ReLU6): codes [0, 2**bits-1]."""

    unsigned_input = True


class ShiftedUintActPerTensorFloat(ActPerTensorFloat):
    """Asymmetric activation quantizer: uint codes [0, 2**bits-1] with an integer zero_point."""

    unsigned_input = False


ActQuantizer = ActPerTensorFloat


def clamp_absorbed(node, module_of) -> bool:
    """Whether a ReLU/ReLU6/clamp fx ``node`` can be dropped: every user is an activation quantizer
    (``module_of(user)`` gives its module) whose saturation does the clamp
    (:meth:`ActPerTensorFloat.clamp_is_redundant`). The export drops such a clamp and the
    integer-exact simulation lets the fused kernel's saturation do it, so both ask this one check.
    """
    from . import ops
    lo, hi = ops.clamp_bounds(node)
    users = list(node.users)
    return bool(users) and all(
        u.op == "call_module" and isinstance(module_of(u), ActPerTensorFloat)
        and module_of(u).clamp_is_redundant(lo, hi) for u in users)
