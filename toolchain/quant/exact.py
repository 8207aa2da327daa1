"""Integer-exact simulation: what onnxruntime's fused integer kernels compute, in torch.

The fake-quant model (:class:`~toolchain.quant.model.QuantizedModel`'s ``forward``) computes
each Conv in float32 on dequantized codes and quantizes the result: the same integers as
onnxruntime with graph optimizations *off*, up to float summation order. With them *on*,
onnxruntime fuses ``DQ → Conv → Q`` into QLinearConv (and Add, pooling, Concat, Gemm into
their QLinear forms), which sums the integer codes exactly in int32 and requantizes with a
float32 multiplier; a value within an ulp of a rounding boundary can then land on the
neighbouring code, and the flip propagates.

:func:`exact_forward` runs the quantized model's graph the fused way: every value is either

- float32 (an op onnxruntime runs in float: between a DequantizeLinear and a QuantizeLinear),
- :class:`Codes` — integer codes on an activation quantizer's grid (after a QuantizeLinear, and
  through grid-preserving ops: reshape, slice, zero pad, max pool, ReLU), or
- :class:`Pending` — the exact integer result of a fusable op (its int32 accumulator, or its
  inputs' codes) waiting for the quantizer that follows; the quantizer applies the kernel's
  requantization (:mod:`.integer_kernels`). A Pending that reaches anything else is used as
  the float value onnxruntime's unfused graph computes (or, for a Linear whose output is the
  graph's output, QGemm's float output).

Codes are held in float64 tensors (integers below 2**53 are exact), so int32 accumulators
are exact. The simulation is for checking and reporting (no gradients); fine-tuning keeps the
fast fake-quant forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx

from . import integer_kernels as K
from ..graph import ops
from .float_ops import FLOAT_UNARY, ort_apply, ort_bilinear_resize, ort_node
from .layers import QuantConv2d, QuantLinear, QuantLayer
from .model import QuantizedModel
from .quantizers import ActPerTensorFloat, clamp_absorbed


@dataclass
class Codes:
    """Integer codes on a per-tensor grid.

    Attributes:
        q: codes, float64 tensor holding integers in [0, qmax].
        scale: float32 scalar tensor.
        zero_point: integer zero point.
        qmax: the largest code (2**bits − 1).
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: int
    qmax: int

    def dequantize(self) -> torch.Tensor:
        """DequantizeLinear: ``(q − zero_point) · scale`` in float32."""
        return K.dequantize(self.q, self.scale, self.zero_point)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Codes":
        return Codes(fn(self.q), self.scale, self.zero_point, self.qmax)


@dataclass
class Pending:
    """The exact result of a fusable op, before the quantizer that follows it.

    Attributes:
        requantize: ``fn(quantizer) -> Codes``: the fused kernel's output on that quantizer's grid.
        float: ``fn() -> float32 tensor``: the value when no quantizer follows (unfused graph).
        op: what it came from ("conv", "linear", "add", "mul", "avgpool", "concat"), for reports.
    """

    requantize: Callable[[ActPerTensorFloat], Codes]
    float: Callable[[], torch.Tensor]
    op: str


def _materialize(v):
    """The float32 tensor onnxruntime would see for a value outside a fused kernel."""
    if isinstance(v, Codes):
        return v.dequantize()
    if isinstance(v, Pending):
        return v.float()
    return v


def _grid_of(q: ActPerTensorFloat) -> tuple[torch.Tensor, int, int]:
    return q.effective_scale().detach().float().reshape(()), int(round(float(q.zero_point))), int(q.qmax)


class ExactInterpreter(fx.Interpreter):
    """Runs ``qmodel.gm`` with :class:`Codes` / :class:`Pending` values (module docstring).

    :meth:`on_codes` is called with every activation quantizer's codes (override it to record them).
    """

    def on_codes(self, quantizer_path: str, codes: Codes) -> None:
        """Hook: the codes an activation quantizer (graph module path) produced."""

    def __init__(self, gm: fx.GraphModule, *, fused_add: bool = True):
        super().__init__(gm)
        self.gm = gm
        #: whether a residual Add of codes runs as QLinearAdd (else in float: the target's Sum)
        self.fused_add = fused_add
        self.current_node: fx.Node | None = None

    def run_node(self, n: fx.Node):
        self.current_node = n
        return super().run_node(n)

    # modules ------------------------------------------------------------------
    def call_module(self, target, args, kwargs):
        mod = self.gm.get_submodule(target)
        x = args[0]
        if isinstance(mod, ActPerTensorFloat):
            out = self._quantize(mod, x)
            if isinstance(out, Codes):
                self.on_codes(target, out)
            return out
        if isinstance(mod, QuantLayer):
            return self._layer(mod, x)
        return mod(*[_materialize(a) for a in args], **kwargs)

    def _quantize(self, q: ActPerTensorFloat, x):
        if q.mode != "quant":
            return _materialize(x)
        if isinstance(x, Pending):
            return x.requantize(q)
        scale, zp, qmax = _grid_of(q)
        return Codes(K.quantize(_materialize(x), scale, zp, qmax), scale, zp, qmax)

    def _layer(self, layer: QuantLayer, x):
        if not isinstance(x, Codes) or layer.weight_quant.mode != "quant" or layer.bias_scale() is None:
            return layer(_materialize(x))
        w_codes = layer.weight_quant.int_repr(layer.weight).double()
        w_scale = layer.weight_quant.effective_scale().detach().float()
        bias = layer.int_bias().double()
        xq = x.q - x.zero_point
        if isinstance(layer, QuantConv2d):
            acc = F.conv2d(xq, w_codes, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            op = "conv"
        elif isinstance(layer, QuantLinear):
            acc = F.linear(xq, w_codes, bias)
            op = "linear"
        else:  # pragma: no cover - every QuantLayer is one of the two
            return layer(_materialize(x))

        def requantize(q: ActPerTensorFloat) -> Codes:
            scale, zp, qmax = _grid_of(q)
            return Codes(K.requantize(acc, K.conv_multiplier(x.scale, w_scale, scale), zp, qmax), scale, zp, qmax)

        def as_float() -> torch.Tensor:
            if op == "linear":  # QGemm with a float output (the logits)
                return K.qgemm_float_output(acc, x.scale, w_scale)
            return layer(x.dequantize())
        return Pending(requantize, as_float, op)

    # functions ----------------------------------------------------------------
    def call_function(self, target, args, kwargs):
        a0 = args[0] if args else None
        if self.fused_add and target in ops.ADD and len(args) >= 2 and all(isinstance(a, Codes) for a in args[:2]) \
                and kwargs.get("alpha", 1) == 1:
            return self._add(args[0], args[1])
        if target in ops.MUL and len(args) >= 2 and all(isinstance(a, Codes) for a in args[:2]):
            return self._mul(args[0], args[1])
        if target in ops.CAT and all(isinstance(a, Codes) for a in args[0]):
            return self._concat(list(args[0]), args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if target in ops.AVG_POOL and isinstance(a0, Codes):
            p = self._avg_pool(a0, target, args, kwargs)
            if p is not None:
                return p
        if target in ops.ACTIVATION and isinstance(a0, Pending) and clamp_absorbed(self.current_node, self._module_of):
            return a0  # the export drops it: the following quantizer's saturation does the clamp
        if isinstance(a0, Codes):
            if target in ops.RELU:
                return a0.map(lambda t: t.clamp_min(a0.zero_point))
            if target in ops.PAD and ops.is_zero_pad(self.current_node):
                return a0.map(lambda t: ops.aten.constant_pad_nd.default(t, args[1], float(a0.zero_point)))
            if target in ops.SPLIT:
                return tuple(a0.map(lambda _, p=p: p) for p in target(a0.q, *args[1:], **kwargs))
            if target in ops.TRANSPARENT_BASE:
                return a0.map(lambda t: target(t, *args[1:], **kwargs))
        if target in FLOAT_UNARY:  # onnxruntime's own float kernel: bit-identical to the QDQ model
            return ort_apply(FLOAT_UNARY[target], _materialize(a0))
        if target in ops.BATCH_NORM:  # a BN not folded into a layer (pre-activation): ORT's kernel
            return self._batch_norm(target, args)
        if target in ops.UPSAMPLE_BILINEAR:
            x = _materialize(a0)
            out_hw = tuple(target(x[:1, :1], *args[1:], **kwargs).shape[-2:])
            align = bool(args[2] if len(args) > 2 else kwargs.get("align_corners", False))
            return ort_bilinear_resize(x, out_hw, align)
        fargs = [_materialize(a) if not isinstance(a, (list, tuple)) else type(a)(_materialize(b) for b in a)
                 for a in args]
        return target(*fargs, **{k: _materialize(v) for k, v in kwargs.items()})

    def _module_of(self, node: fx.Node):
        return self.gm.get_submodule(node.target)

    def _add(self, a: Codes, b: Codes) -> Pending:
        def requantize(q):
            scale, zp, qmax = _grid_of(q)
            return Codes(K.qlinear_add(a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point, scale, zp, qmax),
                         scale, zp, qmax)
        return Pending(requantize, lambda: a.dequantize() + b.dequantize(), "add")

    def _batch_norm(self, target, args):
        x, w, b, mean, var = (_materialize(a) for a in args[:5])
        eps = ops.bn_eps(target, args)
        c = x.shape[1]
        w = torch.ones(c) if w is None else w
        b = torch.zeros(c) if b is None else b
        y = ort_node("BatchNormalization", [x, w, b, mean, var], epsilon=eps)
        if target is ops.aten.batch_norm.default:
            return y
        return y, torch.empty(0), torch.empty(0)

    def _mul(self, a: Codes, b: Codes) -> Pending:
        def requantize(q):
            scale, zp, qmax = _grid_of(q)
            return Codes(K.qlinear_mul(a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point, scale, zp, qmax),
                         scale, zp, qmax)
        return Pending(requantize, lambda: a.dequantize() * b.dequantize(), "mul")

    def _concat(self, xs: list[Codes], dim: int) -> Pending:
        def requantize(q):
            scale, zp, qmax = _grid_of(q)
            parts = [K.qlinear_concat_part(x.q, x.scale, x.zero_point, scale, zp, qmax) for x in xs]
            return Codes(torch.cat(parts, dim), scale, zp, qmax)
        return Pending(requantize, lambda: torch.cat([x.dequantize() for x in xs], dim), "concat")

    def _avg_pool(self, x: Codes, target, args, kwargs) -> Pending | None:
        node = self.current_node
        if node.target is ops.aten.avg_pool2d.default:  # a window: QLinearAveragePool (float inside)
            def requantize_window(q):
                scale, zp, qmax = _grid_of(q)
                y = K.qlinear_avg_pool(x.q, x.scale, x.zero_point, scale, zp, qmax,
                                       lambda t: target(t, *args[1:], **kwargs))
                return Codes(y, scale, zp, qmax)
            return Pending(requantize_window, lambda: target(x.dequantize(), *args[1:], **kwargs), "avgpool")
        if not _is_global_pool(node, x.q):
            return None
        keep = _keepdim(node)

        def requantize(q):
            scale, zp, qmax = _grid_of(q)
            y = K.qlinear_global_avg_pool(x.q, x.scale, x.zero_point, scale, zp, qmax)
            return Codes(y if keep else y.flatten(-3), scale, zp, qmax)

        def as_float():
            return target(x.dequantize(), *args[1:], **kwargs)
        return Pending(requantize, as_float, "avgpool")


def _is_global_pool(node: fx.Node, t: torch.Tensor) -> bool:
    """Whether an averaging node pools each channel's whole H×W (GlobalAveragePool in ONNX)."""
    if t.ndim != 4:
        return False
    if node.target is ops.aten.mean.dim:
        dims = sorted(int(d) % 4 for d in node.args[1])
        return dims == [2, 3]
    if node.target is ops.aten.adaptive_avg_pool2d.default:
        size = node.args[1]
        size = list(size) if isinstance(size, (list, tuple)) else [size]
        return all(int(s) == 1 for s in size)
    return False


def _keepdim(node: fx.Node) -> bool:
    if node.target is ops.aten.mean.dim:
        return bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
    return True


@torch.no_grad()
def exact_forward(qmodel: QuantizedModel, x: torch.Tensor) -> torch.Tensor:
    """Run the quantized model as onnxruntime's fused integer kernels compute it.

    Args:
        qmodel: the quantized model (its quantizers' modes apply; CPU).
        x: (N, C, H, W) float32 input in the normalized input space.

    Returns:
        The first output (e.g. logits (N, num_classes)) as float32.
    """
    out = ExactInterpreter(qmodel.gm, fused_add=qmodel.scheme.fused_add).run(x.float())
    if isinstance(out, (tuple, list)):
        out = out[0]
    return _materialize(out).float()
