"""Quantized compute layers: Conv2d and Linear with folded BN, fake-quant weights and int32 bias.

The bias is quantized as ONNX QDQ requires for integer fusion (QLinearConv):
``bias_scale = s_in * s_w[c]``, codes ``round(b / bias_scale)`` clamped to int32, zero_point 0.
``s_in`` comes from the quantizer that produced the layer's input, linked at rewrite
time (``input_quant``; not a registered submodule, so it is not saved twice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fake_quant import fake_quantize, quantize
from .quantizers import ActPerTensorFloat, Quantizer, quantizer_from_spec
from .spec import QuantSpec

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


class QuantLayer(nn.Module):
    """Float weight + bias (BN folded), a per-channel weight quantizer, a link to the input quantizer.

    Args:
        weight: (Cout, ...) float32 (BN folded).
        bias: (Cout,) or None (zeros).
        weight_spec: the weight's grid (per-channel along axis 0; :mod:`.spec`); the quantizer is
            built from it (:func:`.quantizers.quantizer_from_spec`) and min-max initialized.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, weight_spec: QuantSpec):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        b = torch.zeros(weight.shape[0]) if bias is None else bias.detach().clone().float()
        self.bias = nn.Parameter(b)
        self.weight_quant: Quantizer
        self.set_weight_spec(weight_spec)
        self._input_quant: ActPerTensorFloat | None = None
        #: "first", "last", "first+last" or "" — set by the rewrite
        self.role = ""
        #: the BN trained in the loop with ``bn_mode = "qat"`` (:mod:`.bn_qat`); None when folded
        self.bn_qat: nn.Module | None = None

    def set_weight_spec(self, spec: QuantSpec) -> None:
        """Give the weights a fresh quantizer for ``spec``, min-max initialized (``init_from``).

        Raises:
            ConfigError: no quantizer implements ``spec``.
        """
        self.weight_quant = quantizer_from_spec(spec, self.weight.shape[0])
        self.weight_quant.init_from(self.weight)

    def link_input_quant(self, q: ActPerTensorFloat | None) -> None:
        object.__setattr__(self, "_input_quant", q)

    @property
    def input_quant(self) -> ActPerTensorFloat | None:
        return self._input_quant

    def bias_scale(self) -> torch.Tensor | None:
        """``s_in * s_w`` (float32, shape (Cout,)), or None when the input or weights are not quantized."""
        q = self._input_quant
        if q is None or q.mode != "quant" or self.weight_quant.mode != "quant":
            return None
        return q.effective_scale() * self.weight_quant.effective_scale()

    def quant_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def quant_bias(self) -> torch.Tensor:
        s = self.bias_scale()
        if s is None:
            return self.bias
        return fake_quantize(self.bias, s, torch.zeros_like(s), INT32_MIN, INT32_MAX)

    @torch.no_grad()
    def int_bias(self) -> torch.Tensor:
        """int32 codes of the bias (Cout,), with scale :meth:`bias_scale`."""
        s = self.bias_scale()
        return quantize(self.bias, s, torch.zeros_like(s), INT32_MIN, INT32_MAX).to(torch.int32)


class QuantConv2d(QuantLayer):
    """Conv2d on fake-quantized weights/bias. Input (N,Cin,H,W) float32 → output (N,Cout,H',W')."""

    def __init__(self, weight, bias, weight_spec, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        super().__init__(weight, bias, weight_spec)
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = int(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_qat is not None:
            return self.bn_qat(self, F.conv2d(x, self.quant_weight(), None, self.stride, self.padding,
                                              self.dilation, self.groups))
        return F.conv2d(x, self.quant_weight(), self.quant_bias(), self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, "
                f"kernel={tuple(self.weight.shape[2:])}, stride={self.stride}, padding={self.padding}, "
                f"groups={self.groups}, role={self.role!r}")


class QuantLinear(QuantLayer):
    """Linear on fake-quantized weights/bias. Input (N,in) float32 → output (N,out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_qat is not None:
            return self.bn_qat(self, F.linear(x, self.quant_weight()))
        return F.linear(x, self.quant_weight(), self.quant_bias())

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, role={self.role!r}"
