"""Ops that always run in float: smooth activations, GELU, softmax, and elementwise unary ops.

Smooth activations take their ONNX form from :data:`toolchain.quant.float_ops.FLOAT_UNARY`, which
the exact simulation reads too; the rest have no role in the rewrite's op vocabulary (they are
reported as unknown ops and left in float).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ...core.errors import UnsupportedModelError
from ...quant.float_ops import FLOAT_UNARY
from ..onnx_graph import Value
from .base import converter, node_arg, norm_dim
from .context import ExportContext

aten = torch.ops.aten

#: elementwise ATen ops with a same-meaning default-domain ONNX op
GENERIC_FLOAT = {aten.abs.default: "Abs", aten.sqrt.default: "Sqrt", aten.log.default: "Log",
                 aten.reciprocal.default: "Reciprocal", aten.erf.default: "Erf", aten.floor.default: "Floor",
                 aten.ceil.default: "Ceil", aten.sin.default: "Sin", aten.cos.default: "Cos"}

#: softmax-like ATen ops (one ``dim`` argument) → ONNX op with that ``axis``
SOFTMAX = {aten._softmax.default: "Softmax", aten.softmax.int: "Softmax",
           aten._log_softmax.default: "LogSoftmax", aten.log_softmax.int: "LogSoftmax"}


@converter(*FLOAT_UNARY)
def _float_unary(ctx: ExportContext, node: fx.Node) -> Value:
    """A smooth activation in float (its ONNX form from :data:`~toolchain.quant.float_ops.FLOAT_UNARY`)."""
    form = FLOAT_UNARY[node.target]
    x = ctx.float(node.args[0])
    name = f"{node.name}.{form.op_type.lower()}" if form.times_input else node.name
    y = ctx.b.node(form.op_type, [x], name, **dict(form.attrs))
    if form.times_input:
        y = ctx.b.node("Mul", [x, y], node.name)
    return Value(float=y, origin=node.name)


@converter(aten.gelu.default)
def _gelu(ctx: ExportContext, node: fx.Node) -> Value:
    """GELU at opset 13: x · 0.5 · (1 + erf(x / √2)), or the tanh approximation."""
    b, x, n = ctx.b, ctx.float(node.args[0]), node.name
    if node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") == "tanh":
        cube = b.node("Mul", [b.node("Mul", [x, x], f"{n}.sq"), x], f"{n}.cube")
        inner = b.node("Add", [x, b.node("Mul", [cube, b.const(0.044715, "float32")], f"{n}.c")], f"{n}.inner")
        t = b.node("Tanh", [b.node("Mul", [inner, b.const(float(np.sqrt(2 / np.pi)), "float32")], f"{n}.k")],
                   f"{n}.tanh")
    else:
        t = b.node("Erf", [b.node("Mul", [x, b.const(float(1 / np.sqrt(2)), "float32")], f"{n}.k")], f"{n}.erf")
    half = b.node("Mul", [x, b.const(0.5, "float32")], f"{n}.half")
    return Value(float=b.node("Mul", [half, b.node("Add", [t, b.const(1.0, "float32")], f"{n}.one")], n),
                 origin=n)


@converter(*SOFTMAX)
def _softmax(ctx: ExportContext, node: fx.Node) -> Value:
    axis = norm_dim(int(node.args[1]), ctx.rank(node.args[0]))
    return Value(float=ctx.b.node(SOFTMAX[node.target], [ctx.float(node.args[0])], node.name, axis=axis),
                 origin=node.name)


@converter(*GENERIC_FLOAT)
def _generic_float(ctx: ExportContext, node: fx.Node) -> Value:
    y = ctx.b.node(GENERIC_FLOAT[node.target], [ctx.float(node.args[0])], node.name)
    return Value(float=y, origin=node.name)


@converter(aten.leaky_relu.default, aten.elu.default)
def _alpha_float(ctx: ExportContext, node: fx.Node) -> Value:
    leaky = node.target is aten.leaky_relu.default
    alpha = float(node_arg(node, 1, "negative_slope" if leaky else "alpha", 0.01 if leaky else 1.0))
    if not leaky and (float(node_arg(node, 2, "scale", 1.0)) != 1.0
                      or float(node_arg(node, 3, "input_scale", 1.0)) != 1.0):
        raise UnsupportedModelError(f"node {node.name}: elu with scale/input_scale has no ONNX Elu form")
    y = ctx.b.node("LeakyRelu" if leaky else "Elu", [ctx.float(node.args[0])], node.name, alpha=alpha)
    return Value(float=y, origin=node.name)
