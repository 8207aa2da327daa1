"""Export to the canonical FP form: a ``torch.export`` program with a dynamic batch dimension.

A module (zoo architecture or unpickled) is exported with ``Dim("batch")``; a ``.pt2`` program
saved with a fixed batch size is re-traced from its own aten graph (no user code runs), a literal
batch size in a view/reshape shape first replaced by the input's. Every result is checked to run
at batch sizes 1 and 5, and to return (N, K) logits or (N, K, H, W) per-pixel logits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import UnsupportedModelError, ZqError, first_line
from ..graph import ops
from ..graph.fx import drop_guards, strip_eval_dropout

__all__ = ["TEST_BATCHES", "check_eval_mode", "check_runs", "dynamic_batch_from_static", "export_model",
           "export_with_logits", "free_batch_literals", "run_logits"]

#: the batch sizes an exported program is checked to run at
TEST_BATCHES = (1, 5)


def export_model(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.export.ExportedProgram:
    """Export ``model`` in eval mode with a dynamic batch dimension (the canonical FP form).

    Args:
        model: an ``nn.Module`` taking one (N, C, H, W) float32 tensor.
        input_shape: (C, H, W) of the example input.

    Returns:
        The ``ExportedProgram`` (eval-mode dropout removed); it is checked to run at batch
        sizes 1 and 5. ``model`` is left in eval mode.

    Raises:
        UnsupportedModelError: torch.export fails (first line of torch's message), or the
            exported program does not run at batch 1 and 5.
    """
    return export_with_logits(model, input_shape)[0]


def export_with_logits(model: nn.Module, input_shape) -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    """:func:`export_model`, and the program's (1, K) logits on a zero image (or (1, K, H', W')).

    Raises:
        UnsupportedModelError: as :func:`export_model`.
    """
    model = model.eval()
    example = torch.randn(2, *input_shape)
    try:
        with torch.no_grad():
            program = torch.export.export(
                model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
    except Exception as e:  # torch raises many types here (UserError, RuntimeError, ...)
        raise UnsupportedModelError(
            f"torch.export could not trace the model: {first_line(e)}",
            "the model must be traceable by torch.export with a dynamic batch dimension "
            "(no data-dependent Python control flow, no batch size fixed in view/reshape)",
        ) from None
    strip_eval_dropout(program)
    return program, check_runs(program, input_shape)


def run_logits(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``module`` (a program's ``.module()``) on ``x`` (N, C, H, W), without gradients.

    Raises:
        UnsupportedModelError: the output is not (N, K) or (N, K, H', W').
    """
    with torch.no_grad():
        out = module(x)
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4) or out.shape[0] != x.shape[0]:
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UnsupportedModelError(
            f"the model returns {what} for a batch of {x.shape[0]}; expected (N, num_classes) logits "
            "or (N, num_classes, H, W) per-pixel logits",
        )
    return out


def check_runs(program: torch.export.ExportedProgram, input_shape) -> torch.Tensor:
    """Run ``program.module()`` on zeros at batch sizes 1 and 5; returns the batch-1 logits.

    Raises:
        UnsupportedModelError: it fails at either batch size, or returns no logits.
    """
    module = program.module()
    outs = []
    for b in TEST_BATCHES:
        try:
            outs.append(run_logits(module, torch.zeros(b, *input_shape)))
        except ZqError:
            raise
        except Exception as e:
            raise UnsupportedModelError(
                f"the exported program fails at batch size {b}: {first_line(e)}",
                "the batch dimension must be free (avoid view/reshape with a fixed batch size)",
            ) from None
    return outs[0]


def check_eval_mode(program) -> None:
    """Raise if a BatchNorm or dropout op in the graph runs in training mode.

    Raises:
        UnsupportedModelError: a batch norm with ``training=True`` (or one that always uses batch
            statistics), or a dropout with ``train=True``.
    """
    for n in program.graph.nodes:
        family = ops.packet(n)
        if family in ops.BATCH_NORM_TRAINING_ARG:
            # the no_stats overload has no running statistics: it always uses batch statistics
            training = n.target._overloadname == "no_stats" or (
                len(n.args) > 5 and n.args[5] is not False)
        elif family in ops.DROPOUT_ANY:
            training = len(n.args) > 2 and n.args[2] is not False
        else:
            training = family is ops.aten._batch_norm_with_update
        if training:
            raise UnsupportedModelError(
                f"the program was exported in training mode ({n.target})",
                "export model.eval(): torch.export.export(model.eval(), (x,), dynamic_shapes=...)",
            )


def dynamic_batch_from_static(program, batch: int, input_shape):
    """Re-trace a static-batch program's own aten graph with a dynamic batch, if it allows.

    No user code runs: the graph is the program's. Succeeds when no op hard-codes the batch
    size (e.g. ``flatten`` instead of ``view(B, -1)``); the result is checked against the
    original program image by image. A literal batch size in a view/reshape shape (the channel
    shuffle of ShuffleNet exported at batch 1) is first replaced by the input's batch size
    (:func:`free_batch_literals`). Returns (program, logits at batch 1, literals replaced).

    Raises:
        UnsupportedModelError: the re-trace fails, does not run at batch 1 and 5, or disagrees
            with the original program.
    """
    gm = program.module()
    drop_guards(gm)
    gm.validate_inputs = False  # the pre-hook would reject batch != the static size
    freed = free_batch_literals(gm, batch)
    hint = ("export with a dynamic batch dimension: torch.export.export(model.eval(), (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},)) and torch.export.save it")
    try:
        example = torch.randn(2 if batch != 2 else 3, *input_shape)
        with torch.no_grad():
            new = torch.export.export(gm, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        logits = check_runs(new, input_shape)
        x = torch.randn(max(TEST_BATCHES), *input_shape)
        got = run_logits(new.module(), x)
        old = program.module()
        ref = torch.cat([run_logits(old, x[i:i + 1].expand(batch, *input_shape))[:1] for i in range(len(x))])
        if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
            raise RuntimeError("re-traced program disagrees with the original")
    except Exception as e:
        raise UnsupportedModelError(
            f"the program's batch dimension is fixed to {batch} and could not be made dynamic "
            f"({first_line(e)[:120]})",
            hint,
        ) from None
    return new, logits, freed


def free_batch_literals(gm: torch.fx.GraphModule, batch: int) -> int:
    """Replace a literal batch size in view/reshape shapes by the input's own batch size.

    ``view(x, [1, 2, 24, 28, 28])`` on an x of batch 1 becomes ``view(x, [-1, 2, 24, 28, 28])``
    (or ``[x.size(0), …]`` when the shape already has a −1) — only where the view keeps dim 0
    as the batch (the other dims hold exactly x's other elements). Returns the number rewritten.
    """
    count = 0
    for n in list(gm.graph.nodes):
        if ops.packet(n) not in ops.VIEW_ANY or len(n.args) < 2 or not isinstance(n.args[0], torch.fx.Node):
            continue
        shape, val = list(n.args[1]), n.args[0].meta.get("val")
        if not shape or shape[0] != batch or not isinstance(val, torch.Tensor) or val.dim() < 1 \
                or val.shape[0] != batch or not all(isinstance(d, int) for d in shape):
            continue
        rest, inner = shape[1:], 1
        for d in val.shape[1:]:
            inner *= int(d)
        if -1 not in rest:
            prod = 1
            for d in rest:
                prod *= d
            if prod != inner:
                continue
            n.args = (n.args[0], [-1, *rest], *n.args[2:])
        else:
            with gm.graph.inserting_before(n):
                size = gm.graph.call_function(torch.ops.aten.sym_size.int, (n.args[0], 0))
            n.args = (n.args[0], [size, *rest], *n.args[2:])
        count += 1
    if count:
        gm.recompile()
    return count
