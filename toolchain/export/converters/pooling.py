"""Pooling: average (AveragePool / GlobalAveragePool, ``mean`` over H, W) and max pooling.

Max pooling keeps the grid, so in ``qdq`` it runs on the codes; average pooling runs on the float
tensor between a DequantizeLinear and the next quantizer (QLinearAveragePool /
QLinearGlobalAveragePool when onnxruntime fuses it).
"""

from __future__ import annotations

import torch
from torch import fx

from ...core.errors import UnsupportedModelError
from ...graph import ops
from ..onnx_graph import Value
from .base import converter, node_arg, norm_dim, pair
from .context import ExportContext

aten = torch.ops.aten


def _window(node: fx.Node) -> tuple[list[int], list[int], list[int]]:
    """(kernel, strides, ONNX pads) of an ``avg_pool2d`` / ``max_pool2d`` node (stride defaults to the kernel)."""
    kernel = pair(node.args[1])
    stride = pair(node_arg(node, 2, "stride", []) or kernel)
    ph, pw = pair(node_arg(node, 3, "padding", 0))
    return kernel, stride, [ph, pw, ph, pw]


@converter(aten.adaptive_avg_pool2d.default)
def _adaptive_avg_pool(ctx: ExportContext, node: fx.Node) -> Value:
    x = ctx.float(node.args[0])
    oh, ow = pair(node.args[1])
    h, w = ctx.shape(node.args[0])[-2:]
    if (oh, ow) == (1, 1):
        return Value(float=ctx.b.node("GlobalAveragePool", [x], node.name), origin=node.name)
    if h % oh or w % ow:
        raise UnsupportedModelError(
            f"node {node.name}: adaptive_avg_pool2d from {h}x{w} to {oh}x{ow} has uneven windows",
            "only output sizes that divide the input size export to ONNX AveragePool")
    k = [h // oh, w // ow]
    return Value(float=ctx.b.node("AveragePool", [x], node.name, kernel_shape=k, strides=k), origin=node.name)


@converter(aten.avg_pool2d.default)
def _avg_pool(ctx: ExportContext, node: fx.Node) -> Value:
    kernel, stride, pads = _window(node)
    if node_arg(node, 6, "divisor_override") is not None:
        raise UnsupportedModelError(f"node {node.name}: avg_pool2d with divisor_override has no ONNX form")
    y = ctx.b.node("AveragePool", [ctx.float(node.args[0])], node.name, kernel_shape=kernel, strides=stride,
                   pads=pads, ceil_mode=int(bool(node_arg(node, 4, "ceil_mode", False))),
                   count_include_pad=int(bool(node_arg(node, 5, "count_include_pad", True))))
    return Value(float=y, origin=node.name)


@converter(aten.mean.dim)
def _mean(ctx: ExportContext, node: fx.Node) -> Value:
    src = node.args[0]
    rank = ctx.rank(src)
    dims = node.args[1] if len(node.args) > 1 else None
    dims = sorted(norm_dim(int(d), rank) for d in (dims if dims is not None else range(rank)))
    keepdim = bool(node_arg(node, 2, "keepdim", False))
    b = ctx.b
    if rank == 4 and dims == [2, 3]:  # global average pooling (QLinearGlobalAveragePool when quantized)
        gap = Value(float=b.node("GlobalAveragePool", [ctx.float(src)], node.name), origin=node.name)
        if keepdim:
            return gap
        axes = b.const(dims)
        return Value(base=gap, post=lambda t: b.node("Squeeze", [t, axes], f"{node.name}.squeeze"),
                     origin=node.name)
    x = ctx.float(src)
    if b.opset >= 18:
        y = b.node("ReduceMean", [x, b.const(dims)], node.name, keepdims=int(keepdim))
    else:
        y = b.node("ReduceMean", [x], node.name, axes=dims, keepdims=int(keepdim))
    return Value(float=y, origin=node.name)


@converter(*ops.MAX_POOL)
def _max_pool(ctx: ExportContext, node: fx.Node) -> Value:
    kernel, stride, pads = _window(node)
    dil = pair(node_arg(node, 4, "dilation", 1))
    ceil = int(bool(node_arg(node, 5, "ceil_mode", False)))
    return ctx.grid_op(node, ctx.value(node.args[0]), lambda x, name, zero: ctx.b.node(
        "MaxPool", [x], name, kernel_shape=kernel, strides=stride, pads=pads,
        dilations=dil if dil != [1, 1] else None, ceil_mode=ceil or None))
