"""Upsampling by integer factors: ONNX ``Resize`` (nearest on the codes, bilinear in float).

Nearest-neighbour upsampling keeps the grid (it copies values), so in ``qdq`` it runs on the codes;
bilinear interpolation makes new values and runs on the float tensor, with the attributes the exact
simulation also uses (:func:`toolchain.quant.float_ops.bilinear_resize_attrs`).
"""

from __future__ import annotations

from torch import fx

from ...core.errors import UnsupportedModelError
from ...graph import ops
from ...quant.float_ops import bilinear_resize_attrs
from ..onnx_graph import Value
from .base import converter, node_arg
from .context import ExportContext


def _resize_scales(ctx: ExportContext, node: fx.Node) -> str:
    """Resize's ``scales`` input [1, 1, oh/h, ow/w] (float32), from the traced shapes.

    Raises:
        UnsupportedModelError: the output size is not an integer multiple of the input size.
    """
    h, w = ctx.shape(node.args[0])[-2:]
    oh, ow = ctx.shape(node)[-2:]
    if oh % h or ow % w:
        raise UnsupportedModelError(
            f"node {node.name}: upsampling {h}x{w} to {oh}x{ow} is not by an integer factor",
            "zqtool exports integer upsampling factors")
    return ctx.b.const([1.0, 1.0, oh / h, ow / w], "float32")


@converter(*ops.UPSAMPLE_NEAREST)
def _upsample_nearest(ctx: ExportContext, node: fx.Node) -> Value:
    scales = _resize_scales(ctx, node)
    return ctx.grid_op(node, ctx.value(node.args[0]), lambda x, name, zero: ctx.b.node(
        "Resize", [x, "", scales], name, mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor"))


@converter(*ops.UPSAMPLE_BILINEAR)
def _upsample_bilinear(ctx: ExportContext, node: fx.Node) -> Value:
    align = bool(node_arg(node, 2, "align_corners", False))
    y = ctx.b.node("Resize", [ctx.float(node.args[0]), "", _resize_scales(ctx, node)], node.name,
                   **bilinear_resize_attrs(align))
    return Value(float=y, origin=node.name)
