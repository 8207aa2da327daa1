"""The converter registry: one converter per target, every family registered, the public API in place."""

from __future__ import annotations

import pytest
import torch
from torch import fx

import toolchain.export.converters as conv
from toolchain.export.converters import (CONVERTERS, FMT_FP32, FMT_INT4, FMT_QDQ, FORMATS, ExportContext, converter,
                                         split_sizes)
from toolchain.export.onnx_graph import GraphBuilder
from toolchain.graph import ops
from toolchain.quant.layers import QuantConv2d, QuantLinear
from toolchain.quant.quantizers import ActPerTensorFloat

aten = torch.ops.aten


def test_formats():
    assert FORMATS == (FMT_QDQ, FMT_INT4, FMT_FP32) == ("qdq", "int4", "fp32")


def test_every_family_registers_and_every_converter_lives_in_a_family():
    families = {m.__name__ for m in conv.FAMILIES}
    owners = {fn.__module__ for fn in CONVERTERS.values()}
    assert owners == families  # no family without converters, no converter outside the families
    assert {m.__name__.rsplit(".", 1)[1] for m in conv.FAMILIES} >= {
        "quantizers", "conv_gemm", "activations", "float_ops", "elementwise", "pooling", "shape", "resize"}


def test_the_vocabulary_the_rewrite_keeps_has_converters():
    # conv2d / linear become QuantConv2d / QuantLinear modules and identities are removed before export
    needed = (ops.COMPUTE - ops.CONV - ops.LINEAR) | ops.ACTIVATION | ops.TRANSPARENT_BASE | ops.FLOAT \
        | ops.STRUCTURAL | ops.PAD
    assert sorted(map(str, needed - CONVERTERS.keys())) == []
    for cls in (ActPerTensorFloat, QuantConv2d, QuantLinear):
        assert cls in CONVERTERS


def test_a_second_converter_for_a_target_is_refused():
    target = object()

    def first(ctx, node):
        return None

    def second(ctx, node):
        return None

    try:
        converter(target)(first)
        assert converter(target, target)(first) is first  # the same function again is harmless
        with pytest.raises(ValueError, match="already has a converter .*first.*second"):
            converter(target)(second)
        assert CONVERTERS[target] is first
    finally:
        CONVERTERS.pop(target, None)


def test_export_context_rejects_an_unknown_format():
    gm = fx.symbolic_trace(torch.nn.Identity())
    with pytest.raises(ValueError, match="fmt must be one of"):
        ExportContext(gm, GraphBuilder(13), "int8", {})
    assert ExportContext(gm, GraphBuilder(13), FMT_INT4, {}).fmt == "int4"


class _Splits(torch.nn.Module):
    def forward(self, x):
        return (torch.chunk(x, 3, dim=1), torch.split(x, 4, dim=1), torch.split(x, [2, 5, 3], dim=1))


def test_split_sizes():
    gm = torch.export.export(_Splits(), (torch.zeros(1, 10),)).graph_module
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ops.SPLIT]
    assert [split_sizes(n, 10) for n in nodes] == [[4, 4, 2], [4, 4, 2], [2, 5, 3]]
