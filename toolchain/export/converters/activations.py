"""Piecewise-linear activations: ReLU, ReLU6, hardtanh, clamp.

One whose only consumers are activation quantizers that saturate at or inside its bounds is
dropped (:func:`~toolchain.quant.quantizers.clamp_absorbed`; exact: it cannot change a code).
A ReLU on a quantized tensor in ``qdq`` runs on the codes (``max(code, zero_point)``).
"""

from __future__ import annotations

from torch import fx

from ...core.errors import UnsupportedModelError
from ...graph import ops
from ...quant.quantizers import clamp_absorbed
from ..onnx_graph import Value
from .base import FMT_QDQ, converter
from .context import ExportContext


@converter(*ops.RELU)
def _relu(ctx: ExportContext, node: fx.Node) -> Value:
    src = ctx.value(node.args[0])
    if clamp_absorbed(node, ctx.module):
        return src
    name = ctx.name(node)
    if ctx.fmt == FMT_QDQ and src.codes is not None:  # relu on the grid: max(code, zero_point)
        return Value(codes=ctx.b.node("Clip", [src.codes, src.grid.zero_point], name), grid=src.grid, origin=name)
    return Value(float=ctx.clamp(ctx.float(src), 0.0, None, name), origin=name)


@converter(*ops.HARDTANH, *ops.RELU6)
def _clamp(ctx: ExportContext, node: fx.Node) -> Value:
    lo, hi = ops.clamp_bounds(node)
    if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
        raise UnsupportedModelError(f"node {node.name}: clamp with tensor bounds is not supported")
    if clamp_absorbed(node, ctx.module):
        return ctx.value(node.args[0])
    return Value(float=ctx.clamp(ctx.float(node.args[0]), lo, hi, node.name), origin=node.name)
