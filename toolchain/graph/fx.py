"""Helpers on the fx graphs of ``torch.export`` programs, shared by the loader, the rewrite,
the methods and the exporter.

The canonical FP model is an ``ExportedProgram``; the stages that rewrite or run it take
:func:`fp_module` of it, a plain eval-mode ``torch.fx.GraphModule`` (N, C, H, W) float32 → logits.
"""

from __future__ import annotations

import functools

import torch

from . import ops

__all__ = ["drop_guards", "fp_module", "get_attr_value", "strip_eval_dropout"]


def get_attr_value(gm: torch.nn.Module, target: str) -> torch.Tensor:
    """The tensor behind a ``get_attr`` target such as ``"layer1.0.conv1.weight"``.

    Raises:
        AttributeError: no such attribute path in ``gm``.
    """
    return functools.reduce(getattr, target.split("."), gm)


def fp_module(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """``program.module()`` without the ``_guards_fn`` call, in eval mode.

    The guards call is dropped from the graph (it gets in the way of graph rewrites and
    re-tracing); torch's forward pre-hook still checks the input's C/H/W (any batch size).
    ``.eval()`` is a no-op on the returned module (the program was exported in eval mode);
    ``.train()`` raises ``NotImplementedError``.

    Returns:
        A ``torch.fx.GraphModule``: (N, C, H, W) float32 → (N, num_classes).
    """
    gm = program.module()
    drop_guards(gm)
    for m in gm.modules():
        m.training = False

    def _eval(self):
        return self

    def _train(self, mode: bool = True):
        if mode:
            raise NotImplementedError("an exported program cannot be put in training mode")
        return self

    gm.eval = _eval.__get__(gm)
    gm.train = _train.__get__(gm)
    return gm


def drop_guards(gm: torch.fx.GraphModule) -> None:
    """Remove ``_guards_fn`` call_module nodes (torch ≥ 2.9 adds one) and the submodule, in place.

    Without the submodule, torch's forward pre-hook checks the input shapes against the
    program's range constraints instead (a clear error for a wrong C/H/W).
    """
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":
            gm.graph.erase_node(n)
    if hasattr(gm, "_guards_fn"):
        gm.delete_submodule("_guards_fn")
    gm.graph.lint()
    gm.recompile()


def strip_eval_dropout(program: torch.export.ExportedProgram) -> None:
    """Remove eval-mode (identity) dropout nodes (:data:`~.ops.DROPOUT_ANY` with ``train=False``)
    from the program's graph, in place."""
    graph = program.graph_module.graph
    changed = False
    for n in list(graph.nodes):
        if ops.packet(n) in ops.DROPOUT_ANY and len(n.args) > 2 and n.args[2] is False:
            n.replace_all_uses_with(n.args[0])
            graph.erase_node(n)
            changed = True
    if changed:
        program.graph_module.recompile()
