"""The arithmetic of onnxruntime's fused integer kernels (CPU EP, MLAS), in torch.

Read from onnxruntime's sources (``core/providers/cpu/quantization/qlinearconv.cc``,
``core/mlas/lib/quantize.cpp`` ``MlasRequantizeOutput``, ``qladd.cpp``, ``qlgavgpool.cpp``,
``contrib_ops/cpu/quantization/qlinear_concat.cc``, ``quantize_linear.cc``); the notes are in
``docs/integer-arithmetic.md``. Codes are float64 tensors holding integers (exact below 2**53);
scales are float32; every float step is done in float32 in the kernel's order, and rounding is
to nearest, ties to even (``_mm_cvtps_epi32`` / ``nearbyintf`` under the default rounding mode,
= ``torch.round``).
"""

from __future__ import annotations

from typing import Callable

import torch

F32 = torch.float32


def _f32(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F32)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: int, qmax: int) -> torch.Tensor:
    """QuantizeLinear (uint8, then the sub-8-bit Clip): ``clamp(round(x / scale) + zp, 0, qmax)``,
    the division in float32. Returns float64 codes."""
    v = torch.round(x.to(F32) / _f32(scale)).double() + zero_point
    return v.clamp(0, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: int) -> torch.Tensor:
    """DequantizeLinear: ``float32(q − zp) · scale`` (float32)."""
    return (q - zero_point).to(F32) * _f32(scale)


def conv_multiplier(x_scale: torch.Tensor, w_scale: torch.Tensor, y_scale: torch.Tensor) -> torch.Tensor:
    """QLinearConv's per-output-channel requantization scale: ``x_scale · w_scale[c] / y_scale``,
    left to right in float32. Shape (C,)."""
    return (_f32(x_scale) * w_scale.to(F32)) / _f32(y_scale)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero_point: int, qmax: int) -> torch.Tensor:
    """MlasRequantizeOutput: the int32 accumulator (bias included) as float32, times the
    per-channel float32 multiplier, clamped to [−zp, qmax − zp], rounded half to even, plus zp.

    Args:
        acc: (N, C, …) float64 holding the exact int32 sums.
        multiplier: (C,) float32 (:func:`conv_multiplier`).
    Returns:
        float64 codes in [0, qmax], same shape as ``acc``.
    """
    shape = [1, -1] + [1] * (acc.ndim - 2)
    v = acc.to(F32) * multiplier.to(F32).reshape(shape)
    v = v.clamp(float(-zero_point), float(qmax - zero_point))
    return torch.round(v).double() + zero_point


def qgemm_float_output(acc: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """QGemm with a float output (DQ → Gemm without a Q after it): the int32 accumulator (int32
    bias included) as float32 times ``a_scale · w_scale[c]`` (float32). Shape (N, C)."""
    return acc.to(F32) * (_f32(a_scale) * w_scale.to(F32)).reshape(1, -1)


def _fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add ``a·b + c`` rounded once (computed in float64: the product of
    two float32 values is exact there)."""
    return (a.double() * b.double() + c.double()).to(F32)


def qlinear_add(a: torch.Tensor, a_scale, a_zp: int, b: torch.Tensor, b_scale, b_zp: int,
                y_scale, y_zp: int, qmax: int) -> torch.Tensor:
    """QLinearAdd as MLAS computes it on x86-64 (AVX2 kernel, also on AVX-512/AMX machines).

    With the ratios ``rA = a_scale / y_scale`` and ``rB = b_scale / y_scale`` (float32) and the
    offset ``F = y_zp − fma(rA, a_zp, rB·b_zp)`` (float32 steps), each output is
    ``fma(a, rA, fma(b, rB, F))`` on the raw codes, rounded half to even and saturated to
    [0, qmax] — the zero point is inside F, so it is added before rounding. (ARM64's NEON kernel
    uses a ~22-bit fixed-point form instead and can differ by one code at near-ties.)
    """
    ra = _f32(a_scale) / _f32(y_scale)
    rb = _f32(b_scale) / _f32(y_scale)
    # the compiled kernel fuses rA·a_zp + (rB·b_zp) into one FMA: measured on MobileNetV2's residual adds,
    # where the unfused form disagreed with onnxruntime on 5 of 52 million codes and this one on none
    offset = _f32(float(y_zp)) - _fma_f32(ra, _f32(float(a_zp)), rb * _f32(float(b_zp)))
    inner = _fma_f32(b.to(F32), rb, offset)
    t = _fma_f32(a.to(F32), ra, inner)
    return torch.round(t).double().clamp(0, qmax)


def qlinear_global_avg_pool(x: torch.Tensor, x_scale, x_zp: int, y_scale, y_zp: int, qmax: int) -> torch.Tensor:
    """QLinearGlobalAveragePool (NCHW): per channel, the exact int32 sum of ``x − x_zp`` over H·W,
    as float32, times ``x_scale / (y_scale · H·W)`` (float32), rounded half to even, plus y_zp,
    clamped to [0, qmax]. Returns (N, C, 1, 1) float64 codes."""
    n = x.shape[-1] * x.shape[-2]
    s = (x - x_zp).sum(dim=(-2, -1), keepdim=True)
    mult = _f32(x_scale) / (_f32(y_scale) * _f32(float(n)))
    v = s.to(F32) * mult
    return (torch.round(v).double() + y_zp).clamp(0, qmax)


def qlinear_concat_part(x: torch.Tensor, x_scale, x_zp: int, y_scale, y_zp: int, qmax: int) -> torch.Tensor:
    """One input of QLinearConcat: copied when its scale and zero point equal the output's, else
    requantized element-wise as ``round(dequantize(x) / y_scale) + y_zp``."""
    if float(_f32(x_scale)) == float(_f32(y_scale)) and x_zp == y_zp:
        return x.clamp(0, qmax)
    return quantize(dequantize(x, x_scale, x_zp), y_scale, y_zp, qmax)


def qlinear_avg_pool(x: torch.Tensor, x_scale, x_zp: int, y_scale, y_zp: int, qmax: int,
                     pool: "Callable[[torch.Tensor], torch.Tensor]") -> torch.Tensor:
    """QLinearAveragePool (a window smaller than the image): the window average of the
    dequantized codes in float32 (``pool``: torch's avg_pool2d with the node's kernel, stride,
    padding and count_include_pad), then ``nearbyintf(avg / y_scale + y_zp)`` — the zero point
    is added *before* rounding — clamped to [0, qmax]."""
    avg = pool(dequantize(x, x_scale, x_zp))
    return torch.round(avg / _f32(y_scale) + _f32(float(y_zp))).double().clamp(0, qmax)


def qlinear_mul(a: torch.Tensor, a_scale, a_zp: int, b: torch.Tensor, b_scale, b_zp: int,
                y_scale, y_zp: int, qmax: int) -> torch.Tensor:
    """QLinearMul (MLAS ``qlmul.cpp``, the SSE2 and NEON kernels; broadcasting as numpy).

    The int16 product ``(a − za)(b − zb)`` is exact in int32, converted to float32, times
    ``ratio = f32(f32(sa · sb) / sc)``, plus ``f32(zc)`` (two float32 roundings, no FMA),
    rounded half to even and saturated (then the sub-8-bit Clip). Returns float64 codes.
    """
    ratio = (_f32(a_scale) * _f32(b_scale)) / _f32(y_scale)
    prod = ((a - a_zp) * (b - b_zp)).to(F32)
    v = prod * ratio + _f32(float(y_zp))
    return torch.round(v).double().clamp(0, qmax)
