"""The ATen operator vocabulary, by role: the one list of ops every stage reads.

torch.export produces graphs of ATen ops (``torch.ops.aten.conv2d.default`` …). The
rewrite and the ONNX writer need to know, per op, its role in the quantized model:

- ``COMPUTE``: ops whose inputs must be quantized and whose outputs are quantized
  (Conv, Linear, Add, Concat, pooling that averages) — in ONNX they become
  QLinearConv / QGemm / QLinearAdd / QLinearConcat / QLinearGlobalAveragePool.
- ``ACTIVATION``: ReLU/ReLU6-like clamps, absorbed into the quantizer that follows.
- ``TRANSPARENT``: ops that keep values on the input's integer grid (reshape, slice,
  zero padding, max-pooling, dropout in eval): no quantizer needed after them.
- ``IDENTITY``: ops that do nothing at inference (dropout in eval, clone, alias);
  removed by the rewrite.
Everything else is a float op: it runs between a DequantizeLinear and a QuantizeLinear.

Besides the roles, the loader's checks read op *families* (every overload, training and
decomposed forms included: :data:`BATCH_NORM_ANY`, :data:`DROPOUT_ANY`, :data:`VIEW_ANY`,
matched with :func:`packet`), and :func:`bn_args` / :func:`bn_eps` decode a batch-norm
node's arguments for the rewrite, the exact simulation, the BN-statistics methods and the
exporter.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

aten = torch.ops.aten

CONV = {aten.conv2d.default}
LINEAR = {aten.linear.default}
#: inference batch norm as torch.export writes it (``batch_norm`` returns the tensor, the
#: ``_legit_no_training`` op a tuple whose item 0 is the output)
BATCH_NORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
#: argument position of ``eps`` per inference batch-norm op (see :func:`bn_eps`)
BN_EPS_ARG = {aten.batch_norm.default: 7, aten._native_batch_norm_legit_no_training.default: 6}
ADD = {aten.add.Tensor, aten.add_.Tensor}
CAT = {aten.cat.default}
AVG_POOL = {aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.mean.dim}
MAX_POOL = {aten.max_pool2d.default}
RELU = {aten.relu.default, aten.relu_.default}
HARDTANH = {aten.hardtanh.default, aten.hardtanh_.default, aten.clamp.default}
#: F.relu6 exports as aten.relu6 (nn.ReLU6 as hardtanh): the clamp [0, 6]
RELU6 = {aten.relu6.default, aten.relu6_.default}
RESHAPE = {aten.flatten.using_ints, aten.view.default, aten.reshape.default,
           aten._unsafe_view.default, aten.squeeze.dims, aten.squeeze.dim, aten.unsqueeze.default}
SLICE = {aten.slice.Tensor}
#: axis permutations (the transpose of a channel shuffle)
PERMUTE = {aten.permute.default, aten.transpose.int}
#: channel split into a tuple of views; each part is taken by ``operator.getitem``
SPLIT = {aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default}
#: nearest-neighbour upsampling copies values (grid-preserving); bilinear interpolates (a float op)
UPSAMPLE_NEAREST = {aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default}
UPSAMPLE_BILINEAR = {aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default}
#: elementwise product of two tensors (squeeze-excitation's channel gate): QLinearMul
MUL = {aten.mul.Tensor}
#: arithmetic with a number or a second tensor that runs in float
MUL_SCALAR = {aten.mul.Scalar}
SUB = {aten.sub.Tensor, aten.sub.Scalar}
RSUB = {aten.rsub.Scalar, aten.rsub.Tensor}
DIV = {aten.div.Tensor, aten.div.Scalar}
#: smooth activations onnxruntime runs in float between DequantizeLinear and QuantizeLinear
#: (Sigmoid becomes QLinearSigmoid, a lookup table, when a QuantizeLinear follows it)
HARDSWISH = {aten.hardswish.default}
HARDSIGMOID = {aten.hardsigmoid.default}
SILU = {aten.silu.default}
SIGMOID = {aten.sigmoid.default}
GELU = {aten.gelu.default}
TANH = {aten.tanh.default}
SMOOTH_ACTIVATION = HARDSWISH | HARDSIGMOID | SILU | SIGMOID | GELU | TANH
PAD = {aten.pad.default, aten.constant_pad_nd.default}
IDENTITY = {aten.dropout.default, aten.dropout_.default, aten.clone.default, aten.alias.default, aten.contiguous.default,
            aten.detach.default, aten.feature_dropout.default}

COMPUTE = CONV | LINEAR | ADD | CAT | AVG_POOL  # and MUL of two tensors: see is_tensor_mul
ACTIVATION = RELU | HARDTANH | RELU6
TRANSPARENT_BASE = RESHAPE | SLICE | MAX_POOL | PERMUTE | SPLIT | UPSAMPLE_NEAREST


#: every aten batch-norm op, by overload packet (export IR, decompositions, training forms)
BATCH_NORM_ANY = frozenset({
    aten.batch_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional,
    aten._batch_norm_with_update, aten._batch_norm_no_update, aten.cudnn_batch_norm, aten.miopen_batch_norm,
})
#: the batch-norm packets whose 6th argument (index 5) is ``training``
BATCH_NORM_TRAINING_ARG = frozenset({
    aten.batch_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_functional, aten.cudnn_batch_norm, aten.miopen_batch_norm,
})
#: every dropout packet (argument 2 is ``train``)
DROPOUT_ANY = frozenset({
    aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.feature_alpha_dropout,
    aten.dropout_, aten.feature_dropout_, aten.alpha_dropout_, aten.feature_alpha_dropout_,
})
#: ops whose shape argument (index 1) may spell the batch size as a literal (``view(1, 2, 24, 28, 28)``)
VIEW_ANY = frozenset({aten.view, aten.reshape, aten._unsafe_view})


def packet(node) -> torch._ops.OpOverloadPacket | None:
    """The ATen op family (overload packet, e.g. ``aten.batch_norm``) a call_function node calls,
    or None for other nodes and non-operator targets (``operator.getitem``, Python functions)."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    return node.target.overloadpacket


def has_batchnorm(program) -> bool:
    """True if the graph of ``program`` (an ExportedProgram or fx GraphModule) holds any batch-norm op
    (:data:`BATCH_NORM_ANY`: ``batch_norm``, ``_native_batch_norm_legit*``, …)."""
    return any(packet(n) in BATCH_NORM_ANY for n in program.graph.nodes)


class BatchNormArgs(NamedTuple):
    """The tensors and epsilon of an inference batch-norm node (fx nodes, or values in a simulation)."""

    input: object
    weight: object
    bias: object
    running_mean: object
    running_var: object
    eps: float


def bn_eps(target, args) -> float:
    """``eps`` of a call to an inference batch-norm op (a :data:`BATCH_NORM` target) with ``args``.

    Raises:
        KeyError: ``target`` is not in :data:`BATCH_NORM`.
    """
    return float(args[BN_EPS_ARG[target]])


def bn_args(node) -> BatchNormArgs:
    """(input, weight, bias, running_mean, running_var, eps) of an inference batch-norm node;
    weight and bias may be None (``affine=False``)."""
    a = node.args
    return BatchNormArgs(a[0], a[1], a[2], a[3], a[4], bn_eps(node.target, a))


def bn_output(node) -> list:
    """The nodes that carry a batch-norm node's output tensor: the node itself (``batch_norm``),
    or the ``getitem(…, 0)`` users of the tuple-valued ``_native_batch_norm_legit_no_training``."""
    import operator
    if node.target is aten.batch_norm.default:
        return [node]
    return [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]


def is_split_item(node) -> bool:
    """True for ``getitem(split(x), i)``: one part of a channel split (a view of x)."""
    import operator
    return node.op == "call_function" and node.target is operator.getitem \
        and isinstance(node.args[0], type(node)) and node.args[0].op == "call_function" \
        and node.args[0].target in SPLIT


def is_tensor_mul(node) -> bool:
    """True for a product of two tensors (not a tensor times a number)."""
    return node.op == "call_function" and node.target in MUL and len(node.args) >= 2 \
        and all(isinstance(a, type(node)) for a in node.args[:2])


def is_zero_pad(node) -> bool:
    """True for constant padding with value 0 (keeps values on any grid that contains 0)."""
    if node.target is aten.constant_pad_nd.default:
        value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
        return float(value) == 0.0
    if node.target is aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        return mode == "constant" and (value is None or float(value) == 0.0)
    return False


def is_transparent(node) -> bool:
    """True when the op's output values lie on the integer grid of its (first) input."""
    return node.op == "call_function" and (node.target in TRANSPARENT_BASE or is_zero_pad(node)
                                           or is_split_item(node))


def clamp_bounds(node) -> tuple[float | None, float | None]:
    """(min, max) of a ReLU/ReLU6/hardtanh/clamp node."""
    if node.target in RELU:
        return 0.0, None
    if node.target in RELU6:
        return 0.0, 6.0
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min", -1.0)
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max", 1.0)
    if node.target is aten.clamp.default:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def functional_form(target):
    """The out-of-place overload of an in-place ATen op (``aten.hardswish_.default`` →
    ``aten.hardswish.default``), or None when ``target`` is not an in-place ATen op."""
    if not isinstance(target, torch._ops.OpOverload):
        return None
    name = target._schema.name.split("::", 1)[-1]
    if not name.endswith("_") or name.startswith("_") or name.endswith("__"):
        return None
    packet = getattr(aten, name[:-1], None)
    overload = target._overloadname
    return getattr(packet, overload, None) if packet is not None else None


#: ops with a known place in the QDQ model that run in float between DequantizeLinear and
#: QuantizeLinear (onnxruntime has no integer kernel for them, or not for this use)
FLOAT = SMOOTH_ACTIVATION | BATCH_NORM | UPSAMPLE_BILINEAR | SUB | RSUB | DIV | MUL_SCALAR | {
    aten.exp.default, aten.neg.default,
    aten._softmax.default, aten.softmax.int, aten._log_softmax.default, aten.log_softmax.int}
#: bookkeeping ops that carry no tensor arithmetic (tuple items, symbolic sizes)
STRUCTURAL = {aten.sym_size.int}


def op_name(target) -> str:
    """A short readable name of an fx call target (``aten.hardswish.default`` → ``hardswish``)."""
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::", 1)[-1]
    return getattr(target, "__name__", str(target))


def op_census(gm) -> tuple[dict[str, int], dict[str, int]]:
    """(float ops, unknown ops) of a graph: op name → count.

    *float*: ops the QDQ model runs in float by design (:data:`FLOAT`, a product with a number);
    *unknown*: ops with no role in this vocabulary — kept in float between DQ and Q too,
    which the caller reports (or refuses under ``--strict``).
    """
    import operator
    known = COMPUTE | ACTIVATION | TRANSPARENT_BASE | IDENTITY | PAD | STRUCTURAL | MUL
    floats: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is operator.getitem or \
                (isinstance(n.target, type(operator.add)) and n.target.__module__ == "_operator"):
            continue
        if n.target in FLOAT or (n.target in MUL and not is_tensor_mul(n)):
            floats[op_name(n.target)] = floats.get(op_name(n.target), 0) + 1
        elif n.target not in known:
            unknown[op_name(n.target)] = unknown.get(op_name(n.target), 0) + 1
    return floats, unknown


def format_counts(counts: dict[str, int]) -> str:
    """``hardswish ×19, mul ×9`` (most frequent first)."""
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
