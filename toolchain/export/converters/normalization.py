"""A batch norm that was not folded into a layer (e.g. after an add): ONNX ``BatchNormalization`` in float."""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ...graph import ops
from ..onnx_graph import Value
from .base import converter
from .context import ExportContext

aten = torch.ops.aten


def _bn(ctx: ExportContext, node: fx.Node) -> str:
    """BatchNormalization of an inference batch-norm node (:func:`~toolchain.graph.ops.bn_args`);
    a missing weight / bias (``affine=False``) is written as ones / zeros."""
    bn = ops.bn_args(node)
    c = ctx.shape(bn.input)[1]
    b = ctx.b
    scale = ctx.float(bn.weight) if isinstance(bn.weight, fx.Node) else \
        b.initializer(f"{node.name}.scale", np.ones(c, np.float32))
    shift = ctx.float(bn.bias) if isinstance(bn.bias, fx.Node) else \
        b.initializer(f"{node.name}.bias", np.zeros(c, np.float32))
    return b.node("BatchNormalization", [ctx.float(bn.input), scale, shift, ctx.float(bn.running_mean),
                                         ctx.float(bn.running_var)], node.name, epsilon=bn.eps)


@converter(aten.batch_norm.default)
def _batch_norm(ctx: ExportContext, node: fx.Node) -> Value:
    return Value(float=_bn(ctx, node), origin=node.name)


@converter(aten._native_batch_norm_legit_no_training.default)
def _batch_norm_legit(ctx: ExportContext, node: fx.Node) -> Value:
    """The tuple-valued form: item 0 is the output (the saved mean / rstd items are not exported)."""
    out = Value(float=_bn(ctx, node), origin=node.name)
    return Value(items=(out, None, None), origin=node.name)
