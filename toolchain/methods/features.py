"""Feature maps at matching graph positions of the FP (teacher) and quantized (student) models.

Feature-level distillation (ZAQ's intermediate discrepancy, LRQ's feature terms) compares
teacher and student feature maps at the *same* graph positions. This module

1. chooses those positions automatically on the teacher's ATen graph
   (:func:`stage_output_nodes`: the output of every resolution stage),
2. finds the same positions in the quantized model's rewritten graph
   (:func:`match_nodes`), and
3. captures the tensors with removable :class:`~.taps.Tap` modules (:class:`FeatureTaps`).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..core.errors import UnsupportedModelError
from ..graph import ops
from ..quant.rewrite import ACT_QUANT_PREFIX
from .taps import Tap, insert_taps


def _shape(n: fx.Node):
    v = n.meta.get("val")
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _resolution(n: fx.Node):
    s = _shape(n)
    return (s[2], s[3]) if s is not None and len(s) == 4 else None


def _same_shape_input(n: fx.Node) -> fx.Node | None:
    """The input of a grid-preserving op that does not change the shape (a no-op slice/view), else None."""
    if ops.is_transparent(n) and n.args and isinstance(n.args[0], fx.Node) and _shape(n.args[0]) == _shape(n):
        return n.args[0]
    return None


def stage_output_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The output node of each resolution stage of an FP ATen graph, in graph order.

    The stage resolutions are the distinct spatial sizes (H, W) of Conv outputs, except
    1×1 (globally pooled maps, e.g. squeeze-excitation). For each, the stage output is the
    last node in graph order whose output (read from ``node.meta["val"]``, N×C×H×W) has
    that resolution — the tensor that leaves the stage before the resolution changes or
    before global pooling — traced back through shape-preserving no-op slices/views.
    CIFAR ResNet-20 (32×32 input) → its three stage outputs at 32×32, 16×16 and 8×8.

    Raises:
        UnsupportedModelError: the graph has no Conv with a spatial output, or no shape metadata.
    """
    conv_res = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in ops.CONV:
            r = _resolution(n)
            if r is not None and r != (1, 1) and r not in conv_res:
                conv_res.append(r)
    if not conv_res:
        raise UnsupportedModelError("no convolution with a spatial output (or no shape metadata) in the model",
                                    "feature-level losses need a CNN exported with torch.export")
    last: dict[tuple, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        r = _resolution(n)
        if r in conv_res:
            last[r] = n
    out = []
    for r in conv_res:
        n = last[r]
        while (prev := _same_shape_input(n)) is not None:
            n = prev
        out.append(n)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(set(out), key=order.__getitem__)


def _conv_of_bn_output(n: fx.Node) -> fx.Node | None:
    """The Conv node feeding a BN output node (batch_norm, or getitem 0 of the legit BN op)."""
    bn = n
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node):
        bn = n.args[0]
    if bn.op == "call_function" and bn.target in ops.BATCH_NORM:
        src = bn.args[0]
        if isinstance(src, fx.Node) and src.op == "call_function" and src.target in ops.CONV | ops.LINEAR:
            return src
    return None


def match_nodes(teacher: fx.GraphModule, student: fx.GraphModule, nodes: list[fx.Node]) -> list[fx.Node]:
    """The student (quantized-graph) nodes at the graph positions of teacher ``nodes``.

    The rewrite keeps node names of every op it does not replace; a Conv/Linear (and the
    BN folded into it) becomes a ``call_module`` whose target is the weight's module path.
    Where the student quantizes the tensor (a sole ``act_quant.*`` user), the quantizer's
    output is returned: the student's feature is the deployed, quantized tensor.

    Raises:
        UnsupportedModelError: a position has no counterpart in the student graph.
    """
    by_name = {n.name: n for n in student.graph.nodes}
    modules = {n.target: n for n in student.graph.nodes if n.op == "call_module"}
    out = []
    for t in nodes:
        s = None
        conv = t if t.op == "call_function" and t.target in ops.CONV | ops.LINEAR else _conv_of_bn_output(t)
        if conv is not None:
            w = conv.args[1]
            path = w.target.rsplit(".", 1)[0] if isinstance(w, fx.Node) and w.op == "get_attr" else None
            s = modules.get(path)
        elif t.name in by_name:
            s = by_name[t.name]
        if s is None:
            raise UnsupportedModelError(f"feature position {t.name} of the FP graph has no counterpart "
                                        "in the quantized graph")
        users = list(s.users)
        if len(users) == 1 and users[0].op == "call_module" and \
                str(users[0].target).startswith(ACT_QUANT_PREFIX + "."):
            s = users[0]
        out.append(s)
    return out


class FeatureTaps:
    """Removable taps after ``nodes`` of ``gm`` (modified in place; :meth:`remove` restores it).

    Attributes:
        names: the tapped node names, in order.
        taps: the :class:`Tap` modules; ``tap.value`` is the (N, C, H, W) float32 tensor of the
            last forward pass (with grad).
    """

    def __init__(self, gm: fx.GraphModule, nodes: list[fx.Node], prefix: str = "feature_tap"):
        self.gm, self.prefix = gm, prefix
        self.names = [n.name for n in nodes]
        self.taps: list[Tap] = insert_taps(gm, nodes, prefix=prefix)

    def __len__(self) -> int:
        return len(self.taps)

    def values(self) -> list[torch.Tensor]:
        """The tapped tensors of the last forward pass, in order."""
        return [t.value for t in self.taps]

    def clear(self) -> None:
        for t in self.taps:
            t.value = None

    def remove(self) -> None:
        """Take the taps out of the graph (the graph computes exactly as before they were inserted)."""
        g = self.gm.graph
        for i in range(len(self.taps)):
            name = f"{self.prefix}_{i}"
            for n in [n for n in g.nodes if n.op == "call_module" and n.target == name]:
                n.replace_all_uses_with(n.args[0])
                g.erase_node(n)
            if hasattr(self.gm, name):
                delattr(self.gm, name)
        self.gm.recompile()
        self.taps = []


def teacher_student_taps(teacher: fx.GraphModule, student: fx.GraphModule,
                         nodes: list[fx.Node] | None = None) -> tuple[FeatureTaps, FeatureTaps]:
    """Tap the stage outputs (or ``nodes`` of the teacher) in both graphs at matching positions.

    Returns:
        (teacher taps, student taps), same length and order.
    """
    nodes = stage_output_nodes(teacher) if nodes is None else nodes
    s_nodes = match_nodes(teacher, student, nodes)
    return FeatureTaps(teacher, nodes), FeatureTaps(student, s_nodes)
