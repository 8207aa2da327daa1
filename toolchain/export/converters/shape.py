"""Shape ops, all grid-preserving: reshape / view / flatten, squeeze / unsqueeze, slice, pad,
permute / transpose, split / chunk.

Each runs through :meth:`~.context.ExportContext.grid_op`: on the codes of a quantized tensor in
``qdq`` (so the DequantizeLinear lands in front of the compute op), else on the float tensor.
Only zero padding keeps the grid; other pad modes run in float. The batch (dim 0) is symbolic in
ONNX, so ops that move or split it are refused.
"""

from __future__ import annotations

import torch
from torch import fx

from ...core.errors import UnsupportedModelError
from ...graph import ops
from ..onnx_graph import Value
from .base import converter, node_arg, norm_dim
from .context import ExportContext

aten = torch.ops.aten

#: torch pad mode → ONNX Pad mode
PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _shape_tensor(ctx: ExportContext, sizes, src: fx.Node) -> str:
    """A 1-D int64 shape tensor for Reshape from ints and symbolic sizes (``sym_size`` nodes).

    ``x.size(0)`` in position 0 becomes 0 (ONNX Reshape copies that dim: the batch);
    other symbolic sizes are computed in the graph (Shape → Gather …) and concatenated.
    """
    def batch(s) -> bool:
        return isinstance(s, fx.Node) and s.op == "call_function" and s.target is aten.sym_size.int \
            and int(s.args[1]) == 0
    sizes = [0 if i == 0 and batch(s) else s for i, s in enumerate(sizes)]
    if all(isinstance(s, int) for s in sizes):
        return ctx.b.const([int(s) for s in sizes])
    parts = [ctx.b.const([s]) if isinstance(s, int) else ctx.value(s).shape for s in sizes]
    return ctx.b.node("Concat", parts, f"{ctx.name(src)}.shape", axis=0)


def _reshape_to(ctx: ExportContext, node: fx.Node, shape: str) -> Value:
    return ctx.grid_op(node, ctx.value(node.args[0]), lambda x, name, zero: ctx.b.node("Reshape", [x, shape], name))


@converter(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _view(ctx: ExportContext, node: fx.Node) -> Value:
    return _reshape_to(ctx, node, _shape_tensor(ctx, list(node.args[1]), node.args[0]))


@converter(aten.flatten.using_ints)
def _flatten(ctx: ExportContext, node: fx.Node) -> Value:
    shape = ctx.shape(node.args[0])
    rank = len(shape)
    start = norm_dim(int(node_arg(node, 1, "start_dim", 0)), rank)
    end = norm_dim(int(node_arg(node, 2, "end_dim", -1)), rank)
    if start == 1 and end == rank - 1:
        return ctx.grid_op(node, ctx.value(node.args[0]),
                           lambda x, name, zero: ctx.b.node("Flatten", [x], name, axis=1))
    if start == 0:
        raise UnsupportedModelError(f"node {node.name}: flatten over the batch dimension is not supported")
    sizes = [0] * start + [-1] + [int(d) for d in shape[end + 1:]]
    return _reshape_to(ctx, node, ctx.b.const(sizes))


@converter(aten.squeeze.dims, aten.squeeze.dim)
def _squeeze(ctx: ExportContext, node: fx.Node) -> Value:
    shape = ctx.shape(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else range(len(shape))
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [norm_dim(int(d), len(shape)) for d in dims]
    dims = [d for d in dims if d != 0 and shape[d] == 1]  # torch ignores non-1 dims; dim 0 is the batch
    src = ctx.value(node.args[0])
    if not dims:
        return src
    axes = ctx.b.const(dims)
    return ctx.grid_op(node, src, lambda x, name, zero: ctx.b.node("Squeeze", [x, axes], name))


@converter(aten.unsqueeze.default)
def _unsqueeze(ctx: ExportContext, node: fx.Node) -> Value:
    axes = ctx.b.const([norm_dim(int(node.args[1]), ctx.rank(node.args[0]) + 1)])
    return ctx.grid_op(node, ctx.value(node.args[0]), lambda x, name, zero: ctx.b.node("Unsqueeze", [x, axes], name))


@converter(*ops.SLICE)
def _slice(ctx: ExportContext, node: fx.Node) -> Value:
    shape = ctx.shape(node.args[0])
    dim = norm_dim(int(node_arg(node, 1, "dim", 0)), len(shape))
    start, end, step = node_arg(node, 2, "start"), node_arg(node, 3, "end"), node_arg(node, 4, "step", 1)
    if any(isinstance(v, fx.Node) for v in (start, end, step)):
        raise UnsupportedModelError(f"node {node.name}: slice with symbolic bounds is not supported")
    start, end, step = int(start or 0), (2 ** 63 - 1 if end is None else int(end)), int(step)
    src = ctx.value(node.args[0])
    if start == 0 and step == 1 and end >= 2 ** 62:  # a full slice (torch.export writes x[:, …] this way)
        return src
    b = ctx.b
    inputs = [b.const([start]), b.const([min(end, 2 ** 63 - 1)]), b.const([dim]), b.const([step])]
    return ctx.grid_op(node, src, lambda x, name, zero: b.node("Slice", [x, *inputs], name))


@converter(*ops.PAD)
def _pad(ctx: ExportContext, node: fx.Node) -> Value:
    rank = ctx.rank(node.args[0])
    torch_pads = [int(p) for p in node.args[1]]
    if node.target is aten.constant_pad_nd.default:
        mode, value = "constant", float(node_arg(node, 2, "value", 0.0))
    else:
        mode = node_arg(node, 2, "mode", "constant")
        value = node_arg(node, 3, "value", None)
        value = 0.0 if value is None else float(value)
    onnx_mode = PAD_MODES.get(mode)
    if onnx_mode is None:
        raise UnsupportedModelError(f"node {node.name}: pad mode {mode!r} is not supported",
                                    f"supported modes: {', '.join(PAD_MODES)}")
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(torch_pads) // 2):  # torch: (last_begin, last_end, 2nd-last_begin, …)
        d = rank - 1 - i
        begins[d], ends[d] = torch_pads[2 * i], torch_pads[2 * i + 1]
    b = ctx.b
    pads = b.const(begins + ends)
    src = ctx.value(node.args[0])
    if onnx_mode == "constant" and value == 0.0:  # zero padding keeps the grid: pad codes with the zero point
        return ctx.grid_op(node, src, lambda x, name, zero: b.node("Pad", [x, pads, zero], name, mode="constant"))
    ins = [ctx.float(src), pads] + ([b.const(value, "float32")] if onnx_mode == "constant" else [])
    return Value(float=b.node("Pad", ins, node.name, mode=onnx_mode), origin=node.name)


@converter(*ops.PERMUTE)
def _permute(ctx: ExportContext, node: fx.Node) -> Value:
    rank = ctx.rank(node.args[0])
    if node.target is aten.transpose.int:
        perm = list(range(rank))
        a, c = norm_dim(int(node.args[1]), rank), norm_dim(int(node.args[2]), rank)
        perm[a], perm[c] = perm[c], perm[a]
    else:
        perm = [norm_dim(int(d), rank) for d in node.args[1]]
    if perm[0] != 0:
        raise UnsupportedModelError(f"node {node.name}: a permutation that moves the batch dimension")
    return ctx.grid_op(node, ctx.value(node.args[0]),
                       lambda x, name, zero: ctx.b.node("Transpose", [x], name, perm=perm))


def split_sizes(node: fx.Node, length: int) -> list[int]:
    """The part sizes of a ``chunk`` / ``split`` / ``split_with_sizes`` node along its dim of ``length``."""
    if node.target is aten.chunk.default:
        step = -(-length // int(node.args[1]))
        return [min(step, length - s) for s in range(0, length, step)]
    if node.target is aten.split_with_sizes.default:
        return [int(v) for v in node.args[1]]
    step = int(node.args[1])
    return [min(step, length - s) for s in range(0, length, step)]


@converter(*ops.SPLIT)
def _split(ctx: ExportContext, node: fx.Node) -> Value:
    shape = ctx.shape(node.args[0])
    dim = norm_dim(int(node_arg(node, 2, "dim", 0)), len(shape))
    if dim == 0:
        raise UnsupportedModelError(f"node {node.name}: a split of the batch dimension")
    src, b, parts, start = ctx.value(node.args[0]), ctx.b, [], 0
    for i, size in enumerate(split_sizes(node, int(shape[dim]))):
        ins = [b.const([start]), b.const([start + size]), b.const([dim])]
        part = ctx.grid_op(node, src, lambda x, name, zero, ins=ins, i=i: b.node("Slice", [x, *ins], f"{name}.{i}"))
        parts.append(part)
        start += size
    return Value(items=tuple(parts), origin=ctx.name(node))
