"""toolchain.graph: the op vocabulary's batch-norm decoding and op families, and the fx helpers."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from toolchain.graph import ops
from toolchain.graph.fx import fp_module, get_attr_value, strip_eval_dropout


class ConvBN(nn.Module):
    def __init__(self, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3, eps=eps)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x))).mean((2, 3))


def _program(eps: float = 1e-3):
    return torch.export.export(ConvBN(eps).eval(), (torch.randn(2, 1, 6, 6),))


def _legit_no_training_graph(eps: float) -> fx.GraphModule:
    """A graph calling the tuple-valued ``_native_batch_norm_legit_no_training`` op."""
    g = fx.Graph()
    x = g.placeholder("x")
    root = nn.Module()
    for name, value in (("w", torch.ones(3)), ("b", torch.zeros(3)), ("rm", torch.zeros(3)), ("rv", torch.ones(3))):
        root.register_buffer(name, value)
    w, b, rm, rv = (g.get_attr(n) for n in ("w", "b", "rm", "rv"))
    bn = g.call_function(ops.aten._native_batch_norm_legit_no_training.default, (x, w, b, rm, rv, 0.1, eps))
    out = g.call_function(operator.getitem, (bn, 0))
    g.output(out)
    return fx.GraphModule(root, g)


def test_bn_args_read_eps_of_both_inference_batch_norm_ops():
    gm = fp_module(_program(1e-3))
    (bn,) = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ops.BATCH_NORM]
    args = ops.bn_args(bn)
    assert args.eps == pytest.approx(1e-3) and args.input.target is ops.aten.conv2d.default
    assert get_attr_value(gm, args.running_var.target).shape == (3,)
    outs = ops.bn_output(bn)
    if bn.target is ops.aten.batch_norm.default:
        assert outs == [bn]
    else:
        assert len(outs) == 1 and outs[0].target is operator.getitem and outs[0].args == (bn, 0)

    legit = _legit_no_training_graph(2e-2)
    (node,) = [n for n in legit.graph.nodes if n.target in ops.BATCH_NORM]
    assert ops.bn_args(node).eps == pytest.approx(2e-2)
    assert ops.bn_eps(node.target, node.args) == pytest.approx(2e-2)
    assert [u.target for u in ops.bn_output(node)] == [operator.getitem]
    assert ops.has_batchnorm(legit) and ops.packet(node) is ops.aten._native_batch_norm_legit_no_training
    with pytest.raises(KeyError):
        ops.bn_eps(ops.aten.native_batch_norm.default, node.args)  # not an inference BN op


def test_packet_families_and_eval_dropout_removal():
    program = _program()
    assert ops.has_batchnorm(program)
    assert all(ops.packet(n) is None for n in program.graph.nodes if n.op != "call_function")
    assert ops.BATCH_NORM_TRAINING_ARG <= ops.BATCH_NORM_ANY
    assert {t.overloadpacket for t in ops.BATCH_NORM} <= ops.BATCH_NORM_ANY
    assert ops.aten.dropout in ops.DROPOUT_ANY and ops.aten.view in ops.VIEW_ANY
    strip_eval_dropout(program)
    assert not any(ops.packet(n) in ops.DROPOUT_ANY for n in program.graph.nodes)
    no_bn = torch.export.export(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()).eval(), (torch.randn(1, 1, 4, 4),))
    assert not ops.has_batchnorm(no_bn)


def test_fp_module_refuses_training_mode_and_runs_any_batch():
    gm = fp_module(_program())
    assert gm.eval() is gm and not any(m.training for m in gm.modules())
    with pytest.raises(NotImplementedError):
        gm.train()
    assert not any(n.op == "call_module" and n.target == "_guards_fn" for n in gm.graph.nodes)
    assert gm(torch.randn(2, 1, 6, 6)).shape == (2, 3)
