"""fx node → ONNX converters: one registry keyed by ATen target (or quantized module class).

Each converter gets the :class:`ExportContext` and one fx node and returns its
:class:`~.onnx_graph.Value`. The same converters write all three formats; what
they emit follows the quantizers' modes and the context's ``fmt``:

- ``qdq``: activation quantizer → ``QuantizeLinear(uint8)`` → ``Clip(0, qmax)`` for
  bits < 8 ("QCDQ") → codes; a ``DequantizeLinear`` with the same scale/zero point
  is made where a float consumer needs the tensor. Weights: ``DequantizeLinear``
  of int8 per-channel codes (``axis=0``); bias: ``DequantizeLinear`` of int32 codes
  with scale ``s_in * s_w``. Grid-preserving ops (reshape, flatten, slice, zero pad,
  max pooling, ReLU on a quantized tensor) run on the uint8 codes, before the
  DequantizeLinear, so every Conv/Gemm/Add/Concat/pool sees ``DQ → op → Q`` — the
  pattern onnxruntime's QDQ transformers fuse (QLinearConv, QGemm, QLinearAdd, …).
- ``int4``: as ``qdq`` but INT4 weight codes (bits ≤ 4) and UINT4 activation codes
  (bits ≤ 4; a float Clip to the quantizer's range goes before a 3-bit Q); shape ops
  run on the float tensor since onnxruntime has few UINT4 kernels.
- ``fp32`` (the model in ``float_mode()``): quantizers are identities, weights are
  the folded float32 tensors.

A ReLU/ReLU6/clamp whose only consumers are activation quantizers that saturate at
or inside its bounds is dropped (exact: it cannot change a code). Onnxruntime would
drop a Relu before a zero-point-0 Q itself, but not a Clip(0, 6) before a sub-8-bit
quantizer (it sees the uint8 range), which would leave the Conv in float.
"""

from __future__ import annotations

import operator
from typing import Callable

import numpy as np
import torch
from onnx import TensorProto
from torch import fx

from ..errors import UnsupportedModelError
from ..quant import ops
from ..quant.layers import QuantConv2d, QuantLinear, QuantLayer
from ..quant.float_ops import FLOAT_UNARY, bilinear_resize_attrs
from ..quant.quantizers import ActPerTensorFloat, clamp_absorbed
from .onnx_graph import GraphBuilder, Grid, Value

aten = torch.ops.aten

FMT_QDQ, FMT_INT4, FMT_FP32 = "qdq", "int4", "fp32"
FORMATS = (FMT_QDQ, FMT_INT4, FMT_FP32)

#: How QuantLinear is written. "gemm": DQ(w) → Gemm(transB=1) — onnxruntime 1.31 fuses
#: DQ → Gemm → Q with per-channel weights into QGemm. "matmul": MatMul(x, DQ(wᵀ)) + Add.
LINEAR_FORM = "gemm"

Converter = Callable[["ExportContext", fx.Node], Value]
#: ATen target (``torch.ops.aten.relu.default``, ``operator.getitem`` …) or module class → converter
CONVERTERS: dict[object, Converter] = {}


def converter(*targets) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of each target."""
    def deco(fn: Converter) -> Converter:
        for t in targets:
            CONVERTERS[t] = fn
        return fn
    return deco


class ExportContext:
    """State of one export walk.

    Args:
        gm: the quantized model's GraphModule.
        builder: where nodes and initializers go.
        fmt: ``"qdq"``, ``"int4"`` or ``"fp32"``.
        shapes: concrete output shape of every tensor-valued fx node (from one run of
            the model on a batch of 2; dim 0 is the symbolic batch in ONNX).
        fused_add: write an Add of two quantized tensors as ``Add`` (onnxruntime fuses it into
            QLinearAdd) or, when False, as ``Sum`` (runs in float on every CPU; the target's
            :attr:`~toolchain.targets.Target.fused_add`).
    """

    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder, fmt: str,
                 shapes: dict[fx.Node, tuple[int, ...]], *, fused_add: bool = True):
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        self.gm, self.b, self.fmt, self.shapes = gm, builder, fmt, shapes
        self.fused_add = fused_add
        self.env: dict[fx.Node, Value] = {}
        self._grids: dict[str, Grid] = {}

    # lookups ---------------------------------------------------------------
    def converter_for(self, node: fx.Node) -> Converter | None:
        if node.op == "call_function":
            return CONVERTERS.get(node.target)
        if node.op == "call_module":
            for cls in type(self.module(node)).__mro__:
                if cls in CONVERTERS:
                    return CONVERTERS[cls]
        return None

    def module(self, node: fx.Node) -> torch.nn.Module:
        return self.gm.get_submodule(node.target)

    @staticmethod
    def name(node: fx.Node) -> str:
        """The ONNX node name of an fx node: its module path, else its fx name."""
        return node.target if node.op == "call_module" else node.name

    def value(self, arg) -> Value:
        if not isinstance(arg, fx.Node):
            raise TypeError(f"expected an fx node, got {arg!r}")
        return self.env[arg]

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return self.shapes[node]

    def rank(self, node: fx.Node) -> int:
        return len(self.shapes[node])

    # tensors -----------------------------------------------------------------
    def float(self, v: Value | fx.Node) -> str:
        """The float32 tensor of a value (a DequantizeLinear of its codes when needed)."""
        if isinstance(v, fx.Node):
            v = self.value(v)
        if v.float is None:
            if v.codes is not None:
                g = v.grid
                v.float = self.b.node("DequantizeLinear", [v.codes, g.scale, g.zero_point], f"{v.origin}.dq")
            elif v.post is not None:
                v.float = v.post(self.float(v.base))
            else:
                raise UnsupportedModelError(f"{v.origin or 'a value'} is not a tensor (a tuple or symbolic int)")
        return v.float

    def operand(self, arg, dtype: str = "float32") -> str:
        """An op input: the float tensor of an fx node, or a scalar constant."""
        if isinstance(arg, fx.Node):
            return self.float(arg)
        return self.b.const(arg, dtype)

    def grid(self, node: fx.Node, q: ActPerTensorFloat) -> Grid:
        """The scale / zero-point initializers of activation quantizer node ``node`` (made once).

        In ``int4``, codes are UINT4 when ``q.bits <= 4``, except for a tensor that reaches a
        MaxPool: onnxruntime 1.31 (ORT_ENABLE_EXTENDED and up) rewrites ``DQ → MaxPool`` to a
        MaxPool on the codes, which has no UINT4 kernel ("Type 'tensor(uint4)' … of operator
        (MaxPool) … is invalid"), so that tensor keeps an 8-bit container.
        """
        path = node.target
        if path not in self._grids:
            scale = np.asarray(q.effective_scale().detach().cpu().numpy(), dtype=np.float32).reshape(())
            zp = int(round(float(q.zero_point)))
            uint4 = self.fmt == FMT_INT4 and q.bits <= 4 and not _reaches(node, ops.MAX_POOL)
            s_name = self.b.initializer(f"{path}.scale", scale)
            if uint4:
                zp_name = self.b.packed_initializer(f"{path}.zero_point", TensorProto.UINT4, np.asarray(zp))
            else:
                zp_name = self.b.initializer(f"{path}.zero_point", np.asarray(zp, dtype=np.uint8))
            self._grids[path] = Grid(path, s_name, zp_name, zp, q.qmax, float(scale),
                                     TensorProto.UINT4 if uint4 else TensorProto.UINT8)
        return self._grids[path]

    def grid_op(self, node: fx.Node, src: Value, emit: Callable[[str, str, str], str]) -> Value:
        """Apply a grid-preserving op: on the codes in ``qdq`` format, else on the float tensor.

        ``emit(x, node_name, zero)`` writes the op on tensor ``x``; ``zero`` is a scalar
        constant holding the real value 0 in x's domain (the zero point for codes).
        """
        name = self.name(node)
        if self.fmt == FMT_QDQ and src.codes is not None:
            return Value(codes=emit(src.codes, name, src.grid.zero_point), grid=src.grid, origin=name)
        # the float result stays on src's grid (if any): keep it for the output-scale metadata
        return Value(float=emit(self.float(src), name, self.b.const(0.0, "float32")), grid=src.grid, origin=name)


# --------------------------------------------------------------------------
# helpers

def _arg(node: fx.Node, i: int, key: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _pair(v) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(x) for x in (v * 2 if len(v) == 1 else v)]


def _reaches(node: fx.Node, targets) -> bool:
    """Whether ``node``'s value flows into an op in ``targets`` through grid-preserving ops only."""
    stack = list(node.users)
    while stack:
        u = stack.pop()
        if u.op != "call_function":
            continue
        if u.target in targets:
            return True
        if ops.is_transparent(u) or u.target in ops.RELU:
            stack.extend(u.users)
    return False


def _q_range(grid: Grid) -> tuple[float, float]:
    s = np.float32(grid.scale_value)
    return float(np.float32(-grid.zero_point_value) * s), float(np.float32(grid.qmax - grid.zero_point_value) * s)


# --------------------------------------------------------------------------
# quantizers and layers

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
            x = _float_clamp(ctx, x, lo, hi, f"{path}.range")
        codes = b.node("QuantizeLinear", [x, grid.scale, grid.zero_point], f"{path}.q")
        if grid.code_type == TensorProto.UINT8 and grid.qmax < 255:
            codes = b.node("Clip", [codes, b.const(0, "uint8"), b.const(grid.qmax, "uint8")], f"{path}.clip")
        return codes

    if src.post is not None:  # quantize before a pending shape op, then apply it to the codes
        return Value(codes=src.post(quantize(ctx.float(src.base))), grid=grid, origin=path)
    return Value(codes=quantize(ctx.float(src)), grid=grid, origin=path)


def _layer_params(ctx: ExportContext, path: str, layer: QuantLayer, *, transpose: bool = False) -> tuple[str, str]:
    """(weight, bias) float tensors of a layer: DQ of int8/INT4 and int32 codes, or float initializers.

    ``transpose`` writes a Linear weight as (in, out) for MatMul (per-channel axis 1).
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
        zeros = np.zeros(scale.shape, dtype=np.int8)
        if ctx.fmt == FMT_INT4 and wq.bits <= 4:
            c_name = b.packed_initializer(f"{path}.weight", TensorProto.INT4, codes)
            z_name = b.packed_initializer(f"{path}.weight_zero_point", TensorProto.INT4, zeros)
        else:
            c_name = b.initializer(f"{path}.weight", codes.astype(np.int8))
            z_name = b.initializer(f"{path}.weight_zero_point", zeros)
        s_name = b.initializer(f"{path}.weight_scale", scale)
        weight = b.node("DequantizeLinear", [c_name, s_name, z_name], f"{path}.weight_dq", axis=axis)
    else:
        wf = w.cpu().numpy().astype(np.float32)
        weight = b.initializer(f"{path}.weight", np.ascontiguousarray(wf.T) if transpose else wf)
    bias_scale = layer.bias_scale()
    if bias_scale is not None:
        codes = layer.int_bias().cpu().numpy().astype(np.int32)
        s_name = b.initializer(f"{path}.bias_scale", bias_scale.detach().cpu().numpy().astype(np.float32))
        z_name = b.initializer(f"{path}.bias_zero_point", np.zeros(codes.shape, dtype=np.int32))
        c_name = b.initializer(f"{path}.bias", codes)
        bias = b.node("DequantizeLinear", [c_name, s_name, z_name], f"{path}.bias_dq", axis=0)
    else:
        bias = b.initializer(f"{path}.bias", layer.quant_bias().detach().cpu().numpy().astype(np.float32))
    return weight, bias


@converter(QuantConv2d)
def _conv(ctx: ExportContext, node: fx.Node) -> Value:
    layer: QuantConv2d = ctx.module(node)
    x = ctx.float(node.args[0])
    w, bias = _layer_params(ctx, node.target, layer)
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
        w, bias = _layer_params(ctx, path, layer)
        return Value(float=ctx.b.node("Gemm", [x, w, bias], path, transB=1), origin=path)
    w, bias = _layer_params(ctx, path, layer, transpose=True)
    y = ctx.b.node("MatMul", [x, w], path)
    return Value(float=ctx.b.node("Add", [y, bias], f"{path}.add_bias"), origin=path)


# --------------------------------------------------------------------------
# activations

def _float_clamp(ctx: ExportContext, x: str, lo: float | None, hi: float | None, name: str) -> str:
    """Clamp a float tensor: Relu / Clip, or Max / Min in the ``int4`` format.

    onnxruntime 1.31's Relu/Clip + QuantizeLinear fusions abort session creation when the
    QuantizeLinear has a UINT4 zero point ("Unexpected data type for QuantizeLinear input
    y_zero_point of 21"), so the int4 file spells clamps with Max/Min, which they skip.
    """
    b = ctx.b
    if ctx.fmt == FMT_INT4:
        if lo is not None:
            x = b.node("Max", [x, b.const(lo, "float32")], name if hi is None else f"{name}.max")
        if hi is not None:
            x = b.node("Min", [x, b.const(hi, "float32")], name)
        return x
    if lo == 0.0 and hi is None:
        return b.node("Relu", [x], name)
    ins = [x, "" if lo is None else b.const(lo, "float32"), "" if hi is None else b.const(hi, "float32")]
    while ins[-1] == "":
        ins.pop()
    return b.node("Clip", ins, name)


@converter(*ops.RELU)
def _relu(ctx: ExportContext, node: fx.Node) -> Value:
    src = ctx.value(node.args[0])
    if clamp_absorbed(node, ctx.module):
        return src
    name = ctx.name(node)
    if ctx.fmt == FMT_QDQ and src.codes is not None:  # relu on the grid: max(code, zero_point)
        return Value(codes=ctx.b.node("Clip", [src.codes, src.grid.zero_point], name), grid=src.grid, origin=name)
    return Value(float=_float_clamp(ctx, ctx.float(src), 0.0, None, name), origin=name)


@converter(*ops.HARDTANH, *ops.RELU6)
def _clamp(ctx: ExportContext, node: fx.Node) -> Value:
    lo, hi = ops.clamp_bounds(node)
    if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
        raise UnsupportedModelError(f"node {node.name}: clamp with tensor bounds is not supported")
    if clamp_absorbed(node, ctx.module):
        return ctx.value(node.args[0])
    return Value(float=_float_clamp(ctx, ctx.float(node.args[0]), lo, hi, node.name), origin=node.name)


def _float_unary(ctx: ExportContext, node: fx.Node) -> Value:
    """A smooth activation in float (its ONNX form from :data:`~..quant.float_ops.FLOAT_UNARY`)."""
    form = FLOAT_UNARY[node.target]
    x = ctx.float(node.args[0])
    name = f"{node.name}.{form.op_type.lower()}" if form.times_input else node.name
    y = ctx.b.node(form.op_type, [x], name, **dict(form.attrs))
    if form.times_input:
        y = ctx.b.node("Mul", [x, y], node.name)
    return Value(float=y, origin=node.name)


converter(*FLOAT_UNARY)(_float_unary)


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


@converter(aten._softmax.default, aten.softmax.int)
def _softmax(ctx: ExportContext, node: fx.Node) -> Value:
    axis = _dim(int(node.args[1]), ctx.rank(node.args[0]))
    return Value(float=ctx.b.node("Softmax", [ctx.float(node.args[0])], node.name, axis=axis), origin=node.name)


@converter(aten._log_softmax.default, aten.log_softmax.int)
def _log_softmax(ctx: ExportContext, node: fx.Node) -> Value:
    axis = _dim(int(node.args[1]), ctx.rank(node.args[0]))
    return Value(float=ctx.b.node("LogSoftmax", [ctx.float(node.args[0])], node.name, axis=axis), origin=node.name)


# --------------------------------------------------------------------------
# elementwise binary ops

def _binary(onnx_op: str):
    def conv(ctx: ExportContext, node: fx.Node) -> Value:
        a, c = node.args[0], node.args[1]
        xa, xc = ctx.operand(a), ctx.operand(c)
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1:
            xc = ctx.b.node("Mul", [xc, ctx.b.const(float(alpha), "float32")], f"{node.name}.alpha")
        return Value(float=ctx.b.node(onnx_op, [xa, xc], node.name), origin=node.name)
    return conv


@converter(*ops.ADD)
def _add(ctx: ExportContext, node: fx.Node) -> Value:
    """Add; of two quantized tensors on a target without fused adds, ONNX Sum (not fused by onnxruntime)."""
    quantized = all(isinstance(a, fx.Node) and ctx.value(a).grid is not None for a in node.args[:2])
    if ctx.fused_add or not quantized or node.kwargs.get("alpha", 1) != 1:
        return _binary("Add")(ctx, node)
    y = ctx.b.node("Sum", [ctx.float(node.args[0]), ctx.float(node.args[1])], node.name)
    return Value(float=y, origin=node.name)
converter(aten.sub.Tensor, aten.sub.Scalar)(_binary("Sub"))
converter(aten.mul.Tensor, aten.mul.Scalar)(_binary("Mul"))
converter(aten.div.Tensor, aten.div.Scalar)(_binary("Div"))


@converter(*ops.RSUB)
def _rsub(ctx: ExportContext, node: fx.Node) -> Value:
    """rsub(x, other, alpha) = other − alpha · x."""
    x, other = ctx.operand(node.args[0]), ctx.operand(node.args[1])
    alpha = float(node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1))
    if alpha != 1:
        x = ctx.b.node("Mul", [x, ctx.b.const(alpha, "float32")], f"{node.name}.alpha")
    return Value(float=ctx.b.node("Sub", [other, x], node.name), origin=node.name)


@converter(*ops.CAT)
def _cat(ctx: ExportContext, node: fx.Node) -> Value:
    tensors = node.args[0]
    axis = _dim(int(_arg(node, 1, "dim", 0)), ctx.rank(tensors[0]))
    return Value(float=ctx.b.node("Concat", [ctx.float(t) for t in tensors], node.name, axis=axis), origin=node.name)


# --------------------------------------------------------------------------
# pooling

@converter(aten.adaptive_avg_pool2d.default)
def _adaptive_avg_pool(ctx: ExportContext, node: fx.Node) -> Value:
    x = ctx.float(node.args[0])
    oh, ow = _pair(node.args[1])
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
    kernel = _pair(node.args[1])
    stride = _pair(_arg(node, 2, "stride", []) or kernel)
    ph, pw = _pair(_arg(node, 3, "padding", 0))
    if _arg(node, 6, "divisor_override") is not None:
        raise UnsupportedModelError(f"node {node.name}: avg_pool2d with divisor_override has no ONNX form")
    y = ctx.b.node("AveragePool", [ctx.float(node.args[0])], node.name, kernel_shape=kernel, strides=stride,
                   pads=[ph, pw, ph, pw], ceil_mode=int(bool(_arg(node, 4, "ceil_mode", False))),
                   count_include_pad=int(bool(_arg(node, 5, "count_include_pad", True))))
    return Value(float=y, origin=node.name)


@converter(aten.mean.dim)
def _mean(ctx: ExportContext, node: fx.Node) -> Value:
    src = node.args[0]
    rank = ctx.rank(src)
    dims = node.args[1] if len(node.args) > 1 else None
    dims = sorted(_dim(int(d), rank) for d in (dims if dims is not None else range(rank)))
    keepdim = bool(_arg(node, 2, "keepdim", False))
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
    kernel = _pair(node.args[1])
    stride = _pair(_arg(node, 2, "stride", []) or kernel)
    ph, pw = _pair(_arg(node, 3, "padding", 0))
    dil = _pair(_arg(node, 4, "dilation", 1))
    ceil = int(bool(_arg(node, 5, "ceil_mode", False)))
    return ctx.grid_op(node, ctx.value(node.args[0]), lambda x, name, zero: ctx.b.node(
        "MaxPool", [x], name, kernel_shape=kernel, strides=stride, pads=[ph, pw, ph, pw],
        dilations=dil if dil != [1, 1] else None, ceil_mode=ceil or None))


# --------------------------------------------------------------------------
# shape ops (grid-preserving)

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
    start = _dim(int(_arg(node, 1, "start_dim", 0)), rank)
    end = _dim(int(_arg(node, 2, "end_dim", -1)), rank)
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
    dims = [_dim(int(d), len(shape)) for d in dims]
    dims = [d for d in dims if d != 0 and shape[d] == 1]  # torch ignores non-1 dims; dim 0 is the batch
    src = ctx.value(node.args[0])
    if not dims:
        return src
    axes = ctx.b.const(dims)
    return ctx.grid_op(node, src, lambda x, name, zero: ctx.b.node("Squeeze", [x, axes], name))


@converter(aten.unsqueeze.default)
def _unsqueeze(ctx: ExportContext, node: fx.Node) -> Value:
    axes = ctx.b.const([_dim(int(node.args[1]), ctx.rank(node.args[0]) + 1)])
    return ctx.grid_op(node, ctx.value(node.args[0]), lambda x, name, zero: ctx.b.node("Unsqueeze", [x, axes], name))


@converter(*ops.SLICE)
def _slice(ctx: ExportContext, node: fx.Node) -> Value:
    shape = ctx.shape(node.args[0])
    dim = _dim(int(_arg(node, 1, "dim", 0)), len(shape))
    start, end, step = _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1)
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
        mode, value = "constant", float(_arg(node, 2, "value", 0.0))
    else:
        mode = _arg(node, 2, "mode", "constant")
        value = _arg(node, 3, "value", None)
        value = 0.0 if value is None else float(value)
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode)
    if onnx_mode is None:
        raise UnsupportedModelError(f"node {node.name}: pad mode {mode!r} is not supported")
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


# --------------------------------------------------------------------------
# batch norm (one not folded into a layer), tuples, symbolic sizes

def _bn(ctx: ExportContext, node: fx.Node, eps: float) -> str:
    x, w, bias, mean, var = node.args[:5]
    c = ctx.shape(node.args[0])[1]
    b = ctx.b
    scale = ctx.float(w) if isinstance(w, fx.Node) else b.initializer(f"{node.name}.scale", np.ones(c, np.float32))
    shift = ctx.float(bias) if isinstance(bias, fx.Node) else b.initializer(f"{node.name}.bias", np.zeros(c, np.float32))
    return b.node("BatchNormalization", [ctx.float(x), scale, shift, ctx.float(mean), ctx.float(var)],
                  node.name, epsilon=eps)


@converter(aten.batch_norm.default)
def _batch_norm(ctx: ExportContext, node: fx.Node) -> Value:
    return Value(float=_bn(ctx, node, float(node.args[7])), origin=node.name)


@converter(aten._native_batch_norm_legit_no_training.default)
def _batch_norm_legit(ctx: ExportContext, node: fx.Node) -> Value:
    out = Value(float=_bn(ctx, node, float(node.args[6])), origin=node.name)
    return Value(items=(out, None, None), origin=node.name)


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


def _sym_binary(onnx_op: str):
    def conv(ctx: ExportContext, node: fx.Node) -> Value:
        ins = [ctx.value(a).shape if isinstance(a, fx.Node) else ctx.b.const([int(a)]) for a in node.args[:2]]
        return Value(shape=ctx.b.node(onnx_op, ins, node.name), origin=node.name)
    return conv


converter(operator.mul)(_sym_binary("Mul"))
converter(operator.add)(_sym_binary("Add"))
converter(operator.sub)(_sym_binary("Sub"))
converter(operator.floordiv)(_sym_binary("Div"))  # sizes are non-negative: truncation = floor


# --------------------------------------------------------------------------
# channel rearrangements and upsampling

@converter(*ops.PERMUTE)
def _permute(ctx: ExportContext, node: fx.Node) -> Value:
    rank = ctx.rank(node.args[0])
    if node.target is aten.transpose.int:
        perm = list(range(rank))
        a, c = _dim(int(node.args[1]), rank), _dim(int(node.args[2]), rank)
        perm[a], perm[c] = perm[c], perm[a]
    else:
        perm = [_dim(int(d), rank) for d in node.args[1]]
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
    dim = _dim(int(_arg(node, 2, "dim", 0)), len(shape))
    if dim == 0:
        raise UnsupportedModelError(f"node {node.name}: a split of the batch dimension")
    src, b, parts, start = ctx.value(node.args[0]), ctx.b, [], 0
    for i, size in enumerate(split_sizes(node, int(shape[dim]))):
        ins = [b.const([start]), b.const([start + size]), b.const([dim])]
        part = ctx.grid_op(node, src, lambda x, name, zero, ins=ins, i=i: b.node("Slice", [x, *ins], f"{name}.{i}"))
        parts.append(part)
        start += size
    return Value(items=tuple(parts), origin=ctx.name(node))


def _resize_scales(ctx: ExportContext, node: fx.Node) -> str:
    """Resize's ``scales`` input [1, 1, oh/h, ow/w] (float32), from the traced shapes."""
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
    align = bool(_arg(node, 2, "align_corners", False))
    y = ctx.b.node("Resize", [ctx.float(node.args[0]), "", _resize_scales(ctx, node)], node.name,
                   **bilinear_resize_attrs(align))
    return Value(float=y, origin=node.name)


# --------------------------------------------------------------------------
# ops with no role in the rewrite's vocabulary (reported as unknown, run in float)

#: elementwise ATen ops with a same-meaning default-domain ONNX op
GENERIC_FLOAT = {aten.abs.default: "Abs", aten.sqrt.default: "Sqrt", aten.log.default: "Log",
                 aten.reciprocal.default: "Reciprocal", aten.erf.default: "Erf", aten.floor.default: "Floor",
                 aten.ceil.default: "Ceil", aten.sin.default: "Sin", aten.cos.default: "Cos"}


@converter(*GENERIC_FLOAT)
def _generic_float(ctx: ExportContext, node: fx.Node) -> Value:
    y = ctx.b.node(GENERIC_FLOAT[node.target], [ctx.float(node.args[0])], node.name)
    return Value(float=y, origin=node.name)


@converter(aten.leaky_relu.default, aten.elu.default)
def _alpha_float(ctx: ExportContext, node: fx.Node) -> Value:
    leaky = node.target is aten.leaky_relu.default
    alpha = float(_arg(node, 1, "negative_slope" if leaky else "alpha", 0.01 if leaky else 1.0))
    if not leaky and (float(_arg(node, 2, "scale", 1.0)) != 1.0 or float(_arg(node, 3, "input_scale", 1.0)) != 1.0):
        raise UnsupportedModelError(f"node {node.name}: elu with scale/input_scale has no ONNX Elu form")
    y = ctx.b.node("LeakyRelu" if leaky else "Elu", [ctx.float(node.args[0])], node.name, alpha=alpha)
    return Value(float=y, origin=node.name)
