"""The quantized model cut into blocks that read and write one tensor (for block reconstruction).

A *cut* is a node after which only its own value is live: every earlier node's last reader comes
no later than it (constants — ``get_attr`` nodes — do not count). In a ResNet the cuts are the
outputs of the residual blocks and of the plain layers around them; in a MobileNetV2 the outputs
of its inverted residual blocks and, inside blocks without a skip connection, of each layer. The
nodes between two cuts form a *segment*; a :class:`Block` is a run of segments holding at least
``min_layers`` Conv/Linear layers (segments without a layer — an activation quantizer, a ReLU — go
with the block before them; those before the first layer with the first block). This is BRECQ's
block granularity (Li et al., ICLR 2021, sec. 3.2: residual blocks, layers elsewhere) found from
the graph, so it needs no per-architecture table.

Each block's ``module`` is an fx GraphModule over the same submodules as the model (no copies):
changing its layers changes the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from ..core.errors import UnsupportedModelError
from .layers import QuantLayer
from .model import QuantizedModel
from .quantizers import ActPerTensorFloat


@dataclass
class Block:
    """A single-input, single-output part of the quantized model.

    Attributes:
        index: position in the model (0 = reads the network input).
        layers: module paths of its Conv/Linear layers (:class:`.layers.QuantLayer`), in graph order.
        act_quantizers: module paths of its activation quantizers (its output's included).
        module: ``module(x) -> y``: x is the value at the cut before the block (the network input for
            block 0), y the value at its last cut (the model output for the last block).
    """

    index: int
    layers: list[str]
    act_quantizers: list[str]
    module: fx.GraphModule = field(repr=False)

    @property
    def name(self) -> str:
        """``layers[0]`` … ``layers[-1]`` (or the one layer's path)."""
        return self.layers[0] if len(self.layers) == 1 else f"{self.layers[0]}…{self.layers[-1]}"


def _is_layer(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), QuantLayer)


def _is_act_quant(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), ActPerTensorFloat)


def _segments(gm: fx.GraphModule) -> tuple[fx.Node, list[list[fx.Node]], fx.Node]:
    """(the placeholder, the segments in order — each ending at a cut except the last —, output)."""
    nodes = [n for n in gm.graph.nodes if n.op != "get_attr"]
    placeholders = [n for n in nodes if n.op == "placeholder"]  # one: the rewrite takes one input
    order = {n: i for i, n in enumerate(nodes)}
    output = nodes[-1]
    last_use = {n: max([order[u] for u in n.users if u in order], default=order[n]) for n in nodes}
    segments, current, live_until = [], [], 0
    for i, n in enumerate(nodes[1:-1], start=1):
        current.append(n)
        live_until = max(live_until, last_use[nodes[i - 1]])
        if live_until <= i:  # nothing before n is read after n: n is a cut
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return placeholders[0], segments, output


def _subgraph(gm: fx.GraphModule, start: fx.Node, nodes: list[fx.Node], end) -> fx.GraphModule:
    """An fx module computing ``end`` (a node, or the output node's argument structure) from ``start``."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: g.placeholder("x")}

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise UnsupportedModelError(f"node {a.name} is read across a block boundary",
                                            "use --set reconstruct=none")
            env[a] = g.node_copy(a)
        return env[a]

    for n in nodes:
        env[n] = g.node_copy(n, arg)
    g.output(fx.map_arg(end, arg))
    return fx.GraphModule(gm, g)


def partition(qmodel: QuantizedModel, min_layers: int = 1) -> list[Block]:
    """The model's blocks in graph order (see the module docstring).

    Args:
        qmodel: the quantized model.
        min_layers: each block holds at least this many Conv/Linear layers (the last may hold
            fewer when the model runs out); 1 = the finest single-tensor blocks.

    Raises:
        UnsupportedModelError: a value other than a constant read across a block boundary.
    """
    gm = qmodel.gm
    start, segments, output = _segments(gm)
    groups: list[list[fx.Node]] = []
    current: list[fx.Node] = []
    count = 0
    for seg in segments:
        k = sum(_is_layer(gm, n) for n in seg)
        if k and count >= min_layers:
            groups.append(current)
            current, count = [], 0
        current += seg
        count += k
    if current:
        groups.append(current)
    blocks = []
    for i, nodes in enumerate(groups):
        end = output.args[0] if i == len(groups) - 1 else nodes[-1]
        blocks.append(Block(index=i, layers=[n.target for n in nodes if _is_layer(gm, n)],
                            act_quantizers=[n.target for n in nodes if _is_act_quant(gm, n)],
                            module=_subgraph(gm, start, nodes, end)))
        start = nodes[-1]
    return blocks


def tensors_of(out) -> list[torch.Tensor]:
    """The tensors in a block's output (a tensor, or the model's output tuple/list)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in tensors_of(o)]
