"""The converter registry, the export formats, and the fx-argument helpers every op family reads.

A converter writes one fx node as ONNX: ``fn(ctx, node) -> Value``, where ``ctx`` is the
walk's :class:`~.context.ExportContext` and the result a :class:`~..onnx_graph.Value`. It is
registered under the node's ATen target (``torch.ops.aten.relu.default``, ``operator.getitem``
…) or, for a ``call_module`` node, the module's class (looked up along its MRO).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import fx

from ..onnx_graph import Value

if TYPE_CHECKING:
    from .context import ExportContext

#: the three file formats one walk writes (see :mod:`toolchain.export.converters`)
FMT_QDQ, FMT_INT4, FMT_FP32 = "qdq", "int4", "fp32"
FORMATS = (FMT_QDQ, FMT_INT4, FMT_FP32)

Converter = Callable[["ExportContext", fx.Node], Value]
#: ATen target (``torch.ops.aten.relu.default``, ``operator.getitem`` …) or module class → converter
CONVERTERS: dict[object, Converter] = {}


def converter(*targets) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of each of ``targets``.

    Each target has one converter, so what the registry holds does not depend on the order
    the family modules are imported in.

    Raises:
        ValueError: a target already has a (different) converter.
    """
    def deco(fn: Converter) -> Converter:
        for t in targets:
            have = CONVERTERS.get(t)
            if have is not None and have is not fn:
                raise ValueError(f"{t!r} already has a converter ({have.__module__}.{have.__qualname__}); "
                                 f"cannot register {fn.__module__}.{fn.__qualname__} for it too")
        for t in targets:
            CONVERTERS[t] = fn
        return fn
    return deco


def node_arg(node: fx.Node, i: int, key: str, default=None):
    """Argument ``i`` of an fx node, given positionally or as keyword ``key``; ``default`` when absent."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def norm_dim(d: int, rank: int) -> int:
    """A dimension index made non-negative (``-1`` → ``rank - 1``)."""
    return d + rank if d < 0 else d


def pair(v) -> list[int]:
    """An int or a 1-/2-sequence (kernel size, stride, padding) as ``[h, w]`` ints."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(x) for x in (v * 2 if len(v) == 1 else v)]
