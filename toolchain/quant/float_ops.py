"""Float ops that onnxruntime runs between a DequantizeLinear and a QuantizeLinear, one table.

A smooth activation (sigmoid, hardswish, SiLU …) has no exact integer form: the QDQ model
runs it in float32 on the dequantized codes, or, for ``DQ → Sigmoid → Q``, onnxruntime
builds a 256-entry lookup table (QLinearSigmoid) by running the same float kernel on every
code. Its float kernels (MLAS's logistic and tanh approximations) differ from torch's in
the last bits, and a value within an ulp of a rounding boundary of the next quantizer then
lands on the neighbouring code. So the export writes each op as the ONNX node given here,
and the integer-exact simulation (:mod:`.exact`) evaluates that very node with
onnxruntime (:func:`ort_apply`), which makes it bit-identical to the deployed model on the
machine it runs on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

aten = torch.ops.aten


@dataclass(frozen=True)
class OnnxUnary:
    """How one ATen activation is written in ONNX: ``op_type(x)``, or ``x · op_type(x)``.

    Attributes:
        op_type: a default-domain ONNX op available at opset 13 (``Sigmoid``, ``HardSigmoid`` …).
        attrs: its attributes as (name, value) pairs.
        times_input: the ATen op is ``x · op_type(x)`` (hardswish = x · hardsigmoid(x) at
            opset 13, which has no HardSwish; SiLU = x · sigmoid(x)).
    """

    op_type: str
    attrs: tuple[tuple[str, float], ...] = ()
    times_input: bool = False


_HARDSIGMOID = (("alpha", 1.0 / 6.0), ("beta", 0.5))  # torch: relu6(x + 3) / 6

#: ATen target → its ONNX form (what the exporter writes and the exact simulation runs)
FLOAT_UNARY: dict[object, OnnxUnary] = {
    aten.sigmoid.default: OnnxUnary("Sigmoid"),
    aten.tanh.default: OnnxUnary("Tanh"),
    aten.exp.default: OnnxUnary("Exp"),
    aten.neg.default: OnnxUnary("Neg"),
    aten.hardsigmoid.default: OnnxUnary("HardSigmoid", _HARDSIGMOID),
    aten.hardswish.default: OnnxUnary("HardSigmoid", _HARDSIGMOID, times_input=True),
    aten.silu.default: OnnxUnary("Sigmoid", times_input=True),
}


def bilinear_resize_attrs(align_corners: bool) -> dict:
    """ONNX Resize attributes of torch's bilinear ``interpolate`` (``upsample_bilinear2d``)."""
    return {"mode": "linear",
            "coordinate_transformation_mode": "align_corners" if align_corners else "pytorch_half_pixel"}


def ort_bilinear_resize(x: torch.Tensor, out_hw: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling of (N, C, H, W) float32 ``x`` to ``out_hw`` by onnxruntime's Resize
    (the node the exporter writes: scales [1, 1, oh/h, ow/w])."""
    h, w = x.shape[-2:]
    scales = torch.tensor([1.0, 1.0, out_hw[0] / h, out_hw[1] / w], dtype=torch.float32)
    return ort_node("Resize", [x, torch.zeros(0), scales], **bilinear_resize_attrs(align_corners))


@functools.lru_cache(maxsize=None)
def _session(op_type: str, attrs: tuple, n_inputs: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    names = [f"x{i}" for i in range(n_inputs)]
    node = helper.make_node(op_type, names, ["y"], **dict(attrs))
    graph = helper.make_graph([node], op_type,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_node(op_type: str, inputs: list[torch.Tensor], **attrs) -> torch.Tensor:
    """One default-domain ONNX node (opset 13) run by onnxruntime's CPU kernel on float32 inputs.

    Args:
        op_type: e.g. ``"Sigmoid"``, ``"BatchNormalization"``.
        inputs: float32 tensors (CPU), in the op's input order.
        attrs: the node's attributes.

    Returns:
        The node's (first) output as a float32 tensor.
    """
    feeds = {f"x{i}": np.ascontiguousarray(t.detach().float().cpu().numpy()) for i, t in enumerate(inputs)}
    sess = _session(op_type, tuple(sorted(attrs.items())), len(inputs))
    return torch.from_numpy(sess.run(None, feeds)[0])


def ort_apply(op: OnnxUnary, x: torch.Tensor) -> torch.Tensor:
    """``op`` applied to ``x`` by onnxruntime's own CPU kernel (bit-identical to the QDQ model).

    Args:
        op: the ONNX form (see :data:`FLOAT_UNARY`).
        x: float32 tensor, any shape (CPU).

    Returns:
        float32 tensor of x's shape; ``x · op(x)`` (one float32 product) when ``op.times_input``.
    """
    y = ort_node(op.op_type, [x], **dict(op.attrs))
    return x.float() * y if op.times_input else y
