"""Quantized layers: Conv and Linear (Gemm, or MatMul + Add) on DequantizeLinear'd weight and bias codes.

Weights are int8 codes per output channel (INT4 in the ``int4`` format for bits ≤ 4, two codes a
byte) with zero points 0 (one shared all-zeros initializer per type and shape); the bias is int32
codes with scale ``s_in · s_w``. A layer whose weight quantizer is off
(the ``fp32`` walk) writes its folded float32 weight and bias as initializers.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from torch import fx

from ...quant.layers import QuantConv2d, QuantLayer, QuantLinear
from ..onnx_graph import Value
from .base import FMT_INT4, converter
from .context import ExportContext

#: How QuantLinear is written. "gemm": DQ(w) → Gemm(transB=1) — onnxruntime 1.31 fuses
#: DQ → Gemm → Q with per-channel weights into QGemm. "matmul": MatMul(x, DQ(wᵀ)) + Add.
LINEAR_FORM = "gemm"


def layer_params(ctx: ExportContext, path: str, layer: QuantLayer, *, transpose: bool = False) -> tuple[str, str]:
    """(weight, bias) float tensors of a layer: DQ of int8/INT4 and int32 codes, or float initializers.

    ``transpose`` writes a Linear weight as (in, out) for MatMul (per-channel axis 1).
    Initializers are named ``<path>.weight``, ``<path>.weight_scale``, ``<path>.bias`` ….
    """
    b = ctx.b
    wq = layer.weight_quant
    w = layer.weight.detach()
    if wq.mode == "quant":
        codes = wq.int_repr(w).cpu().numpy()
        scale = wq.effective_scale().detach().cpu().numpy().astype(np.float32)
        axis = 0
        if transpose:
            codes, axis = np.ascontiguousarray(codes.T), 1
        if ctx.fmt == FMT_INT4 and wq.bits <= 4:
            c_name = b.packed_initializer(f"{path}.weight", TensorProto.INT4, codes)
            z_name = b.shared(f"{path}.weight_zero_point", np.zeros(scale.shape), TensorProto.INT4)
        else:
            c_name = b.initializer(f"{path}.weight", codes.astype(np.int8))
            z_name = b.shared(f"{path}.weight_zero_point", np.zeros(scale.shape), TensorProto.INT8)
        s_name = b.initializer(f"{path}.weight_scale", scale)
        weight = b.node("DequantizeLinear", [c_name, s_name, z_name], f"{path}.weight_dq", axis=axis)
    else:
        wf = w.cpu().numpy().astype(np.float32)
        weight = b.initializer(f"{path}.weight", np.ascontiguousarray(wf.T) if transpose else wf)
    bias_scale = layer.bias_scale()
    if bias_scale is not None:
        codes = layer.int_bias().cpu().numpy().astype(np.int32)
        s_name = b.initializer(f"{path}.bias_scale", bias_scale.detach().cpu().numpy().astype(np.float32))
        z_name = b.shared(f"{path}.bias_zero_point", np.zeros(codes.shape), TensorProto.INT32)
        c_name = b.initializer(f"{path}.bias", codes)
        bias = b.node("DequantizeLinear", [c_name, s_name, z_name], f"{path}.bias_dq", axis=0)
    else:
        bias = b.initializer(f"{path}.bias", layer.quant_bias().detach().cpu().numpy().astype(np.float32))
    return weight, bias


@converter(QuantConv2d)
def _conv(ctx: ExportContext, node: fx.Node) -> Value:
    layer: QuantConv2d = ctx.module(node)
    x = ctx.float(node.args[0])
    w, bias = layer_params(ctx, node.target, layer)
    ph, pw = layer.padding
    y = ctx.b.node("Conv", [x, w, bias], node.target, strides=list(layer.stride), pads=[ph, pw, ph, pw],
                   dilations=list(layer.dilation), group=layer.groups,
                   kernel_shape=list(layer.weight.shape[2:]))
    return Value(float=y, origin=node.target)


@converter(QuantLinear)
def _linear(ctx: ExportContext, node: fx.Node) -> Value:
    layer: QuantLinear = ctx.module(node)
    path = node.target
    x = ctx.float(node.args[0])
    if LINEAR_FORM == "gemm" and ctx.rank(node.args[0]) == 2:
        w, bias = layer_params(ctx, path, layer)
        return Value(float=ctx.b.node("Gemm", [x, w, bias], path, transB=1), origin=path)
    w, bias = layer_params(ctx, path, layer, transpose=True)
    y = ctx.b.node("MatMul", [x, w], path)
    return Value(float=ctx.b.node("Add", [y, bias], f"{path}.add_bias"), origin=path)
