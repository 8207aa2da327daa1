"""Elementwise binary ops (add / Sum, sub, mul, div, rsub) and concatenation, on float operands.

An operand is an fx node's float tensor (a DequantizeLinear of its codes when it is quantized) or
a scalar constant. Add of two quantized tensors stays ``Add`` where the target fuses adds
(QLinearAdd) and is written as ``Sum`` where it does not (:attr:`ExportContext.fused_add`).
"""

from __future__ import annotations

import torch
from torch import fx

from ...graph import ops
from ..onnx_graph import Value
from .base import Converter, converter, node_arg, norm_dim
from .context import ExportContext

aten = torch.ops.aten


def _times_alpha(ctx: ExportContext, node: fx.Node, x: str, alpha) -> str:
    """``alpha · x`` (``x`` itself when alpha is 1), the scaled operand of add/sub/rsub."""
    if alpha != 1:
        x = ctx.b.node("Mul", [x, ctx.b.const(float(alpha), "float32")], f"{node.name}.alpha")
    return x


def _binary(onnx_op: str) -> Converter:
    """The converter of ``op(a, c, alpha=1)`` → ONNX ``onnx_op(a, alpha · c)``."""
    def conv(ctx: ExportContext, node: fx.Node) -> Value:
        xa, xc = ctx.operand(node.args[0]), ctx.operand(node.args[1])
        xc = _times_alpha(ctx, node, xc, node.kwargs.get("alpha", 1))
        return Value(float=ctx.b.node(onnx_op, [xa, xc], node.name), origin=node.name)
    return conv


_plain_add = _binary("Add")


@converter(*ops.ADD)
def _add(ctx: ExportContext, node: fx.Node) -> Value:
    """Add; of two quantized tensors on a target without fused adds, ONNX Sum (not fused by onnxruntime)."""
    quantized = all(isinstance(a, fx.Node) and ctx.value(a).grid is not None for a in node.args[:2])
    if ctx.fused_add or not quantized or node.kwargs.get("alpha", 1) != 1:
        return _plain_add(ctx, node)
    y = ctx.b.node("Sum", [ctx.float(node.args[0]), ctx.float(node.args[1])], node.name)
    return Value(float=y, origin=node.name)


converter(aten.sub.Tensor, aten.sub.Scalar)(_binary("Sub"))
converter(aten.mul.Tensor, aten.mul.Scalar)(_binary("Mul"))
converter(aten.div.Tensor, aten.div.Scalar)(_binary("Div"))


@converter(*ops.RSUB)
def _rsub(ctx: ExportContext, node: fx.Node) -> Value:
    """rsub(x, other, alpha) = other − alpha · x."""
    x, other = ctx.operand(node.args[0]), ctx.operand(node.args[1])
    x = _times_alpha(ctx, node, x, float(node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1)))
    return Value(float=ctx.b.node("Sub", [other, x], node.name), origin=node.name)


@converter(*ops.CAT)
def _cat(ctx: ExportContext, node: fx.Node) -> Value:
    tensors = node.args[0]
    axis = norm_dim(int(node_arg(node, 1, "dim", 0)), ctx.rank(tensors[0]))
    return Value(float=ctx.b.node("Concat", [ctx.float(t) for t in tensors], node.name, axis=axis), origin=node.name)
