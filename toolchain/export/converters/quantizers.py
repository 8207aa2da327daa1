"""Activation quantizers: ``QuantizeLinear`` (+ ``Clip`` to a sub-8-bit range) onto the quantizer's grid.

Only :class:`~toolchain.quant.quantizers.ActPerTensorFloat` in ``"quant"`` mode writes nodes; in
any other mode (the ``fp32`` walk) it is an identity. Its DequantizeLinear is made on demand by
:meth:`~.context.ExportContext.float`, in front of the float consumer.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from torch import fx

from ...quant.quantizers import ActPerTensorFloat
from ..onnx_graph import Grid, Value
from .base import converter
from .context import ExportContext


def _q_range(grid: Grid) -> tuple[float, float]:
    """The real values codes 0 and ``qmax`` stand for, as float32 products (what QuantizeLinear inverts)."""
    s = np.float32(grid.scale_value)
    return float(np.float32(-grid.zero_point_value) * s), float(np.float32(grid.qmax - grid.zero_point_value) * s)


@converter(ActPerTensorFloat)
def _act_quant(ctx: ExportContext, node: fx.Node) -> Value:
    q: ActPerTensorFloat = ctx.module(node)
    src = ctx.value(node.args[0])
    if q.mode != "quant":
        return src
    path = node.target
    grid = ctx.grid(node, q)
    b = ctx.b

    def quantize(x: str) -> str:
        if grid.code_type == TensorProto.UINT4 and grid.qmax < 15:
            lo, hi = _q_range(grid)  # exact: Q maps lo → 0 and hi → qmax
            x = ctx.clamp(x, lo, hi, f"{path}.range")
        codes = b.node("QuantizeLinear", [x, grid.scale, grid.zero_point], f"{path}.q")
        if grid.code_type == TensorProto.UINT8 and grid.qmax < 255:
            codes = b.node("Clip", [codes, b.const(0, "uint8"), b.const(grid.qmax, "uint8")], f"{path}.clip")
        return codes

    if src.post is not None:  # quantize before a pending shape op, then apply it to the codes
        return Value(codes=src.post(quantize(ctx.float(src.base))), grid=grid, origin=path)
    return Value(codes=quantize(ctx.float(src)), grid=grid, origin=path)
