"""Fake-quantization arithmetic, bit-exact with ONNX QuantizeLinear/DequantizeLinear.

ONNX (opset 21, QuantizeLinear): ``q = saturate(round_half_even(x / scale) + zero_point)``;
DequantizeLinear: ``x' = (q - zero_point) * scale``. Computing the division (not a
multiplication by 1/scale) in float32 and rounding with ``torch.round`` (half to
even) makes the simulation produce the same integers as onnxruntime.

Gradients: straight-through estimator for the rounding (Bengio et al. 2013), so
``d fake_quant / d x = 1`` inside [qmin, qmax] and 0 where clamped; when ``scale``
requires grad it receives the LSQ gradient (Esser et al., ICLR 2020, eq. 3),
which falls out of autograd through ``x / scale`` and ``* scale``.
"""

from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Half-to-even rounding with an identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
             qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes (as float32 holding integers) of ``x``: ``clamp(round(x/scale)+zp, qmin, qmax)``.

    Args:
        x: float32 tensor of any shape.
        scale, zero_point: float32 tensors broadcastable to ``x`` (zero_point holds integers).
        qmin, qmax: integer range of the codes.
    """
    return torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  qmin: int, qmax: int) -> torch.Tensor:
    """Quantize then dequantize: ``(quantize(x) - zero_point) * scale``, same shape and dtype as ``x``."""
    return (quantize(x, scale, zero_point, qmin, qmax) - zero_point) * scale


def channel_view(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """Reshape a per-channel vector (C,) so it broadcasts along ``axis`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)
