"""Stage 3: write a :class:`~toolchain.quant.model.QuantizedModel` as ONNX.

One walk over ``qmodel.gm.graph`` (converters in :mod:`.converters`) writes
- the QDQ model (``fmt="qdq"``, default, opset 13): integer codes in 8-bit
  containers for every bit width ≤ 8, the form onnxruntime fuses into QLinearConv,
  QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool;
- the opset-21 INT4/UINT4 model (``fmt="int4"``);
- the FP32 reference (:func:`write_fp32`, the same walk with the model in
  ``float_mode()``: float Conv/Gemm on the BN-folded weights).

The ONNX graph is built with ``onnx.helper`` (PyTorch's exporters reject fake-quant
ranges below 8 bits). Graph interface: input ``"input"`` float32 (N, C, H, W) with
``dim_param "N"``; output ``"logits"`` float32 (N, num_classes). ONNX node names
carry the fx module path / node name (``layer1.0.conv1``, ``act_quant.relu_2.q``,
``layer1.0.conv1.weight_dq``), and onnxruntime keeps them in the names of the fused
nodes, so a layer left in float can be traced back to the model.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import fx

from ..core.errors import UnsupportedModelError
from ..core.meta import ONNX_META_PREFIX, ModelMeta
from ..graph.fx import get_attr_value
from ..quant.model import QuantizedModel
from .converters import FMT_FP32, FMT_INT4, FMT_QDQ, ExportContext
from .onnx_graph import GraphBuilder, Value

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "N"
#: opset of the qdq and fp32 files: the lowest with per-axis (De)QuantizeLinear
QDQ_OPSET = 13
#: opset of the int4 file: the first with INT4/UINT4 (De)QuantizeLinear
INT4_OPSET = 21


class SimplifyWarning(UserWarning):
    """onnxsim could not simplify the model; the unsimplified (valid) model was written."""


def _capture_shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, tuple[int, ...]]:
    """Output shape of every tensor-valued node, from one run on ``example``."""
    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class _Rec(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)
            return out

    with torch.no_grad():
        _Rec(gm).run(example)
    return shapes


def _first_output(gm: fx.GraphModule) -> fx.Node:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    arg = out.args[0]
    while isinstance(arg, (tuple, list)):
        if not arg:
            raise UnsupportedModelError("the model returns nothing")
        arg = arg[0]
    if not isinstance(arg, fx.Node):
        raise UnsupportedModelError(f"the model's output is a constant ({arg!r}), not a tensor")
    return arg


def build_onnx(qmodel: QuantizedModel, meta: ModelMeta, *, fmt: str = FMT_QDQ, opset: int | None = None,
               extra_props: dict | None = None) -> onnx.ModelProto:
    """Walk ``qmodel.gm`` and build the ONNX model in memory (not simplified, checked).

    Args:
        qmodel: the quantized model; its quantizers' modes are respected (a quantizer in
            ``"float"`` mode writes no Q/DQ), so ``fmt="fp32"`` expects ``float_mode()``.
        meta: the model card; ``meta.input_shape`` is (C, H, W) of the input.
        fmt: ``"qdq"``, ``"int4"`` or ``"fp32"``.
        opset: default-domain opset; None → 13 (qdq, fp32) or 21 (int4, required).
        extra_props: more ``metadata_props`` (e.g. ``{"scheme": …, "method": "zaq"}``);
            keys get the ``zqtool.`` prefix, values are stored as JSON.

    Returns:
        An ``onnx.ModelProto`` that passed ``onnx.checker.check_model(full_check=True)``.

    Raises:
        UnsupportedModelError: an fx node has no converter (names the op and the node),
            or an op's arguments have no ONNX form.
        ValueError: an unknown ``fmt`` or an opset below what ``fmt`` needs.
    """
    if opset is None:
        opset = INT4_OPSET if fmt == FMT_INT4 else QDQ_OPSET
    if opset < (INT4_OPSET if fmt == FMT_INT4 else QDQ_OPSET):
        raise ValueError(f"fmt={fmt!r} needs opset >= {INT4_OPSET if fmt == FMT_INT4 else QDQ_OPSET}, got {opset}")
    gm = qmodel.gm
    example = torch.zeros((2, *meta.input_shape), dtype=torch.float32)
    try:
        shapes = _capture_shapes(gm, example)
    except Exception as e:  # a model that does not run on its declared input shape
        raise UnsupportedModelError(f"the quantized model does not run on input shape {tuple(example.shape)}: {e}",
                                    "check the model card's input shape") from e
    b = GraphBuilder(opset)
    b.reserve(INPUT_NAME)
    b.reserve(OUTPUT_NAME)
    ctx = ExportContext(gm, b, fmt, shapes, fused_add=qmodel.scheme.fused_add)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            ctx.env[node] = Value(float=INPUT_NAME, origin=INPUT_NAME)
        elif node.op == "get_attr":
            t = get_attr_value(gm, node.target)
            ctx.env[node] = Value(float=b.initializer(node.target, t.detach().cpu().numpy()), origin=node.target)
        elif node.op in ("call_function", "call_module"):
            fn = ctx.converter_for(node)
            if fn is None:
                what = node.target if node.op == "call_function" else type(ctx.module(node)).__name__
                raise UnsupportedModelError(
                    f"cannot export op {what} (node {node.name!r}) to ONNX: no converter",
                    "replace it in the model by a supported op (see toolchain/export/converters/)")
            ctx.env[node] = fn(ctx, node)
        elif node.op != "output":
            raise UnsupportedModelError(f"cannot export fx node {node.name!r} of kind {node.op}")

    out_node = _first_output(gm)
    out_value = ctx.value(out_node)
    logits = ctx.float(out_value)
    if b.produced(logits):
        b.rename_tensor(logits, OUTPUT_NAME)
    else:  # the output is the input or a constant
        b.nodes.append(helper.make_node("Identity", [logits], [OUTPUT_NAME], name=OUTPUT_NAME))

    out_shape = shapes[out_node]
    graph = helper.make_graph(
        b.nodes, "zqtool_" + fmt,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *meta.input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *out_shape[1:]])],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="zqtool")
    # the lowest IR version that holds the opset (and the 4-bit types), for older runtimes
    model.ir_version = max(helper.find_min_ir_version_for(list(model.opset_import)),
                           10 if fmt == FMT_INT4 else 0)
    props = meta.to_onnx_props()
    props[ONNX_META_PREFIX + "format"] = json.dumps(fmt)
    for k, v in (extra_props or {}).items():
        key = k if k.startswith(ONNX_META_PREFIX) else ONNX_META_PREFIX + k
        props[key] = json.dumps(v)
    if out_value.grid is not None:
        props[ONNX_META_PREFIX + "output_scale"] = json.dumps(out_value.grid.scale_value)
        props[ONNX_META_PREFIX + "output_zero_point"] = json.dumps(out_value.grid.zero_point_value)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def _dq_weight_layers(model: onnx.ModelProto) -> int:
    """Number of Conv/Gemm/MatMul nodes whose weight comes from a DequantizeLinear."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node
               if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in dq_out)


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Simplify with onnxsim, keeping the dynamic batch; (model, None) or (original, warning).

    onnxsim (≥ 0.4) keeps QuantizeLinear/DequantizeLinear nodes and their integer
    initializers; it folds constants, merges duplicate constants and removes no-op nodes
    (e.g. a Reshape to the same shape). If it fails, or its result loses the dynamic batch
    or folds integer weights into float, the input model is returned with a warning string.
    """
    try:
        import onnxsim
        simplified, ok = onnxsim.simplify(model)
        onnx.checker.check_model(simplified)
    except Exception as e:  # onnxsim raises many kinds of errors (C++ checker, ORT, shape inference)
        return model, f"onnxsim failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); " \
                      "wrote the unsimplified model"
    if not ok:
        return model, "onnxsim could not validate its result; wrote the unsimplified model"
    dims = simplified.graph.input[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_param != BATCH_DIM:
        return model, "onnxsim lost the dynamic batch dimension; wrote the unsimplified model"
    if _dq_weight_layers(simplified) < _dq_weight_layers(model):
        return model, "onnxsim folded quantized weights into float; wrote the unsimplified model"
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    return simplified, None


def save_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write(model: onnx.ModelProto, path, simplify_model: bool) -> Path:
    if simplify_model:
        model, warning = simplify(model)
        if warning:
            warnings.warn(warning, SimplifyWarning, stacklevel=3)
            model.metadata_props.add(key=ONNX_META_PREFIX + "simplify_warning", value=json.dumps(warning))
    return save_atomic(model, path)


def write_qdq(qmodel: QuantizedModel, meta: ModelMeta, path: str | os.PathLike, *, fmt: str = FMT_QDQ,
              opset: int | None = None, extra_props: dict | None = None, simplify_model: bool = True) -> Path:
    """Write the quantized model as a QDQ ONNX file (stage 3's ``model.qdq.onnx``).

    Format ``"qdq"`` (opset 13 by default; the lowest with per-axis Q/DQ):
    - activation quantizer: ``QuantizeLinear(x, scale: float32 scalar, zero_point: uint8 scalar)``
      → ``Clip(0, 2**bits-1)`` on the uint8 codes when bits < 8 → ``DequantizeLinear``;
    - Conv: ``DequantizeLinear(int8 weight codes in [-qmax, qmax], scale (Cout,), int8 zeros, axis=0)``
      and ``DequantizeLinear(int32 bias codes, s_in·s_w (Cout,), int32 zeros, axis=0)`` → ``Conv``;
    - Linear: the same DQs → ``Gemm(transB=1)`` (onnxruntime 1.31 fuses it into QGemm);
    - reshape/flatten/slice/zero pad/max pool/ReLU on a quantized tensor run on the uint8
      codes before the DequantizeLinear (exact: they keep the grid), so each Conv, Gemm,
      Add, Concat and pooling op has DequantizeLinear inputs and a QuantizeLinear output;
    - a ReLU/ReLU6 directly before a quantizer that saturates at its bounds is omitted.
    With onnxruntime graph optimizations off, the file computes in float exactly what the
    torch simulation computes; with them on (``ORT_ENABLE_EXTENDED``/``ALL``) the QDQ groups
    fuse into integer kernels (QLinearConv, QGemm, QLinearAdd, …) whose fixed-point
    requantization may differ from the simulation by about one output LSB.

    Format ``"int4"`` (opset 21): weights with bits ≤ 4 as INT4 initializers (packed raw, two codes a
    byte), activations with bits ≤ 4 as UINT4 codes (others stay in 8-bit containers). Smaller file
    (the bytes a ``--size-budget`` counts, :mod:`toolchain.quant.size`), but on the
    onnxruntime CPU execution provider it runs in float (no 4-bit kernels): slower than
    FP32. Use it for runtimes with 4-bit kernels.

    Args:
        qmodel: a calibrated quantized model (every activation quantizer has its range).
        meta: model card; written into ``metadata_props`` (``ModelMeta.to_onnx_props``) with
            ``zqtool.format``, ``extra_props`` and, when the logits are quantized,
            ``zqtool.output_scale`` / ``zqtool.output_zero_point``.
        path: destination; written atomically (temp file in the same directory + ``os.replace``).
        fmt: ``"qdq"`` or ``"int4"``.
        opset: override the default opset (13 for qdq, 21 for int4).
        extra_props: e.g. ``{"scheme": qmodel.scheme.to_dict(), "method": "zaq"}``.
        simplify_model: run onnxsim; if it fails the unsimplified model is written and a
            :class:`SimplifyWarning` is issued (also stored as ``zqtool.simplify_warning``).

    Returns:
        ``Path(path)``.

    Raises:
        UnsupportedModelError: an op the writer cannot convert (names the op and the fx node).
        ValueError: ``fmt`` not ``"qdq"``/``"int4"``, or an opset too low for it.
    """
    if fmt not in (FMT_QDQ, FMT_INT4):
        raise ValueError(f"fmt must be 'qdq' or 'int4', got {fmt!r} (use write_fp32 for the FP32 reference)")
    model = build_onnx(qmodel, meta, fmt=fmt, opset=opset, extra_props=extra_props)
    return _write(model, path, simplify_model)


def written_bytes(qmodel: QuantizedModel, meta: ModelMeta, *, fmt: str = FMT_QDQ,
                  extra_props: dict | None = None) -> int:
    """The size in bytes of the file :func:`write_qdq` writes for ``qmodel`` in ``fmt`` (simplified as
    :func:`write_qdq` does), measured on a real file in a temporary directory that is then removed.
    The mixed-precision size model (:mod:`toolchain.quant.size`) measures its fixed bytes with it.

    Raises:
        UnsupportedModelError, ValueError: as :func:`write_qdq`.
    """
    with tempfile.TemporaryDirectory(prefix="zqtool-size-") as d, warnings.catch_warnings():
        warnings.simplefilter("ignore", SimplifyWarning)
        return write_qdq(qmodel, meta, Path(d) / "model.onnx", fmt=fmt, extra_props=extra_props).stat().st_size


def write_fp32(qmodel: QuantizedModel, meta: ModelMeta, path: str | os.PathLike, *,
               extra_props: dict | None = None, simplify_model: bool = True) -> Path:
    """Write the FP32 reference (``model.fp32.onnx``): the quantized model with every quantizer off.

    The same walk as :func:`write_qdq` run under ``qmodel.float_mode()``: no Q/DQ, float
    Conv/Gemm on the BN-folded float32 weights and biases, ReLU/Clip kept. Its output
    matches ``qmodel`` in ``float_mode()`` to float rounding (~1e-5). Same interface,
    metadata (``zqtool.format = "fp32"``), atomic write and onnxsim step as :func:`write_qdq`.

    Raises:
        UnsupportedModelError: an op the writer cannot convert.
    """
    with qmodel.float_mode():
        model = build_onnx(qmodel, meta, fmt=FMT_FP32, extra_props=extra_props)
    return _write(model, path, simplify_model)


def output_scale(model: onnx.ModelProto | str | os.PathLike) -> tuple[float, int] | None:
    """(scale, zero_point) of the quantized logits from an exported file's metadata, or None."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    key = ONNX_META_PREFIX + "output_scale"
    if key not in props:
        return None
    return float(json.loads(props[key])), int(json.loads(props[ONNX_META_PREFIX + "output_zero_point"]))


__all__ = ["write_qdq", "write_fp32", "written_bytes", "build_onnx", "simplify", "save_atomic", "output_scale",
           "SimplifyWarning", "QDQ_OPSET", "INT4_OPSET"]
