"""The state of one export walk (:class:`ExportContext`) and the tensor steps converters share."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from onnx import TensorProto
from torch import fx

from ...core.errors import UnsupportedModelError
from ...graph import ops
from ...quant.quantizers import ActPerTensorFloat
from ..onnx_graph import GraphBuilder, Grid, Value
from .base import CONVERTERS, FMT_INT4, FMT_QDQ, FORMATS, Converter


def reaches(node: fx.Node, targets) -> bool:
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

    Raises:
        ValueError: ``fmt`` is not one of :data:`~.base.FORMATS`.
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
        """The registered converter of a ``call_function`` / ``call_module`` node, or None."""
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
        """The :class:`Value` an fx node became. Raises TypeError for a non-node argument."""
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
            uint4 = self.fmt == FMT_INT4 and q.bits <= 4 and not reaches(node, ops.MAX_POOL)
            s_name = self.b.initializer(f"{path}.scale", scale)
            # shared by value (:meth:`GraphBuilder.shared`): many grids have the same zero point
            zp_name = self.b.shared(f"{path}.zero_point", np.asarray(zp),
                                    TensorProto.UINT4 if uint4 else TensorProto.UINT8)
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

    def clamp(self, x: str, lo: float | None, hi: float | None, name: str) -> str:
        """Clamp float tensor ``x`` to [lo, hi] (None: unbounded): Relu / Clip, or Max / Min in ``int4``.

        onnxruntime 1.31's Relu/Clip + QuantizeLinear fusions abort session creation when the
        QuantizeLinear has a UINT4 zero point ("Unexpected data type for QuantizeLinear input
        y_zero_point of 21"), so the int4 file spells clamps with Max/Min, which they skip.
        """
        b = self.b
        if self.fmt == FMT_INT4:
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
