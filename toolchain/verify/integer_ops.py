"""Which Conv/Gemm/MatMul nodes onnxruntime runs as integer kernels.

A QDQ model only *describes* integer arithmetic; whether it runs in integers
depends on onnxruntime fusing ``DQ → Conv → Q`` patterns into QLinearConv & co.
This module asks onnxruntime for its optimized graph and counts what it built.

Two ways to see that graph:

- ``"onnx"`` (preferred): save the optimized model (``optimized_model_filepath``) at
  ORT_ENABLE_ALL (ORT_ENABLE_EXTENDED if that cannot be saved) and read it with the
  ``onnx`` package;
- ``"profile"`` (no ``onnx`` package needed, e.g. on a Raspberry Pi): run one input
  with profiling on and read the executed kernels, with their input dtypes, from the
  profile JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .session import create_session, session_options

#: compute nodes counted as "convolutions" in the original QDQ graph
CONV_LIKE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: onnxruntime kernels that compute a Conv/Gemm/MatMul in integer arithmetic
INTEGER_OPS = frozenset({
    "QLinearConv", "NhwcQLinearConv", "QLinearConvTranspose", "ConvInteger",
    "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
})
#: compute kernels that run in floating point when they appear in the optimized graph
#: (MAC-heavy ops, their fused forms, arithmetic and averaging the QDQ graph meant to quantize)
FLOAT_COMPUTE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
    "NhwcFusedConv", "Einsum", "Add", "Sub", "Mul", "Div", "Sum",
    "GlobalAveragePool", "AveragePool", "ReduceMean",
})
_FLOAT_TYPES = ("float", "float16", "double", "bfloat16")
_LEVELS = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)


def inspect_integer_ops(path: str | Path, *, method: str = "auto") -> dict:
    """Count the integer kernels onnxruntime (CPU EP) builds for a model.

    Args:
        path: the .onnx model (QDQ or float).
        method: "onnx", "profile", or "auto" (onnx when the package imports and the
            optimized model can be saved, else profile).

    Returns:
        dict with
        ``conv_total`` (Conv/ConvTranspose/Gemm/MatMul nodes — or already-integer
        QLinearConv etc. — in the original graph),
        ``conv_integer`` (integer kernels in the optimized graph, see ``INTEGER_OPS``),
        ``float_nodes`` (list of {"name", "op_type"}: compute kernels left in float),
        ``optimized_op_counts`` (op_type → count in the optimized graph),
        ``inspected_level`` ("ORT_ENABLE_ALL" / "ORT_ENABLE_EXTENDED"),
        ``method`` ("onnx" / "profile"), and ``fallback_reason`` when ORT_ENABLE_ALL
        could not be used.

    Raises:
        InputFileError: onnxruntime cannot load the model.
        ValueError: unknown method.
        ImportError / RuntimeError: method="onnx" without the onnx package / with no
            savable optimization level (method="auto" falls back to "profile" instead).
    """
    if method not in ("auto", "onnx", "profile"):
        raise ValueError(f"method must be 'auto', 'onnx' or 'profile', not {method!r}")
    path = Path(path)
    if method in ("auto", "onnx"):
        try:
            import onnx  # noqa: F401  (optional dependency)
        except ImportError:
            if method == "onnx":
                raise
        else:
            result = _inspect_with_onnx(path)
            if result is not None:
                return result
            if method == "onnx":
                raise RuntimeError(f"onnxruntime could not save the optimized graph of {path} at any level")
    return _inspect_with_profile(path)


# --------------------------------------------------------------------------- onnx route

def _inspect_with_onnx(path: Path) -> dict | None:
    import onnx

    try:
        original = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # e.g. an ORT-format (.ort) file: onnx cannot parse it, profiling can
        return None
    conv_total = sum(1 for n in _all_nodes(original.graph) if n.op_type in CONV_LIKE_OPS | INTEGER_OPS)
    failure = None
    with tempfile.TemporaryDirectory(prefix="zqtool-ort-") as tmp:
        for level in _LEVELS:
            out = Path(tmp) / f"optimized_{int(level)}.onnx"
            so = session_options(1, level)
            so.optimized_model_filepath = os.fspath(out)
            try:
                ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
                optimized = onnx.load(os.fspath(out), load_external_data=False)
            except Exception as e:  # e.g. layout-transformed (NHWC / NCHWc) graphs that cannot be serialized
                failure = (str(e).strip().splitlines() or [type(e).__name__])[0]
                continue
            result = _summarize(conv_total, list(_optimized_nodes(optimized.graph)), level, "onnx")
            if level != _LEVELS[0]:
                result["fallback_reason"] = f"ORT_ENABLE_ALL graph could not be saved: {failure}"
            return result
    return None


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _optimized_nodes(graph):
    """(name, op_type, runs_in_float) for compute nodes, skipping shape arithmetic.

    A node computes on shapes when every non-constant input derives from a
    Shape/Size node; such int64 arithmetic is not "left in float".
    """
    constants = {i.name for i in graph.initializer}
    shape_like: set[str] = set()
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.op_type in ("Shape", "Size") or (
            any(i in shape_like for i in ins) and all(i in shape_like or i in constants for i in ins)
        ):
            shape_like.update(node.output)
            yield node.name, node.op_type, False
            continue
        yield node.name, node.op_type, node.op_type in FLOAT_COMPUTE_OPS


# ------------------------------------------------------------------------ profile route

def _inspect_with_profile(path: Path) -> dict:
    original = _profile_kernels(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    conv_total = sum(1 for _, op, _ in original if op in CONV_LIKE_OPS | INTEGER_OPS)
    level = _LEVELS[0]
    optimized = _profile_kernels(path, level)
    return _summarize(conv_total, optimized, level, "profile")


def _profile_kernels(path: Path, level) -> list[tuple[str, str, bool]]:
    """Run one all-zero input with profiling; (node name, op_type, runs_in_float) per kernel run."""
    with tempfile.TemporaryDirectory(prefix="zqtool-prof-") as tmp:
        so = session_options(1, level)
        so.enable_profiling = True
        so.profile_file_prefix = os.fspath(Path(tmp) / "profile")
        sess = create_session(path, so)
        feeds = {}
        for inp in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(inp.type, np.float32)
            feeds[inp.name] = np.zeros(shape, dtype)
        sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    kernels = []
    for ev in events:
        name = ev.get("name", "")
        args = ev.get("args", {})
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time") or "op_name" not in args:
            continue
        op = args["op_name"]
        types = [next(iter(t), "") for t in args.get("input_type_shape", []) if isinstance(t, dict)]
        in_float = bool(types) and types[0] in _FLOAT_TYPES
        kernels.append((name[: -len("_kernel_time")], op, op in FLOAT_COMPUTE_OPS and in_float))
    return kernels


# -------------------------------------------------------------------------------- common

def _summarize(conv_total: int, nodes: list[tuple[str, str, bool]], level, method: str) -> dict:
    counts = Counter(op for _, op, _ in nodes)
    return {
        "conv_total": int(conv_total),
        "conv_integer": int(sum(c for op, c in counts.items() if op in INTEGER_OPS)),
        "float_nodes": [{"name": name, "op_type": op} for name, op, in_float in nodes if in_float],
        "optimized_op_counts": dict(sorted(counts.items())),
        "inspected_level": level.name if hasattr(level, "name") else str(level),
        "method": method,
    }
