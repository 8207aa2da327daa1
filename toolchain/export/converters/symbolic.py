"""Tuples and symbolic sizes: ``getitem`` of a tuple result, ``sym_size`` and integer arithmetic on sizes.

A symbolic size (``x.size(0)``, the batch) is a 1-D int64 tensor of length 1 in ONNX
(``Shape`` → ``Gather``), combined with ``Mul`` / ``Add`` / ``Sub`` / ``Div``.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ...core.errors import UnsupportedModelError
from ..onnx_graph import Value
from .base import converter
from .context import ExportContext

aten = torch.ops.aten

#: Python operator on sizes → ONNX op on 1-D int64 tensors (sizes are non-negative: truncation = floor)
SIZE_ARITHMETIC = {operator.mul: "Mul", operator.add: "Add", operator.sub: "Sub", operator.floordiv: "Div"}


@converter(operator.getitem)
def _getitem(ctx: ExportContext, node: fx.Node) -> Value:
    src = ctx.value(node.args[0])
    if src.items is None or src.items[node.args[1]] is None:
        raise UnsupportedModelError(f"node {node.name}: getitem of an unsupported tuple element")
    return src.items[node.args[1]]


@converter(aten.sym_size.int)
def _sym_size(ctx: ExportContext, node: fx.Node) -> Value:
    b = ctx.b
    src = ctx.value(node.args[0])
    shape = b.node("Shape", [src.any_tensor() or ctx.float(src)], f"{node.name}.shape")
    return Value(shape=b.node("Gather", [shape, b.const([int(node.args[1])])], node.name, axis=0), origin=node.name)


@converter(*SIZE_ARITHMETIC)
def _size_arithmetic(ctx: ExportContext, node: fx.Node) -> Value:
    ins = [ctx.value(a).shape if isinstance(a, fx.Node) else ctx.b.const([int(a)]) for a in node.args[:2]]
    return Value(shape=ctx.b.node(SIZE_ARITHMETIC[node.target], ins, node.name), origin=node.name)
