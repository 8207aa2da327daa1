"""Feature taps: identity modules inserted into an fx graph that keep the tensor passing through.

Shared by the BN-statistics losses (taps before each BatchNorm) and by feature-level
distillation (taps at the same graph positions of teacher and student).
"""

from __future__ import annotations

import torch
from torch import fx, nn


class Tap(nn.Module):
    """Identity that stores its input in ``.value`` (a tensor with grad, shape as seen)."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.value = x
        return x


def insert_taps(gm: fx.GraphModule, nodes: list[fx.Node], prefix: str = "tap") -> list[Tap]:
    """Insert a :class:`Tap` right after each of ``nodes`` (in place) and return them in order.

    The tap's output replaces the node for all its users, so the graph computes the same thing.
    """
    taps = []
    for i, n in enumerate(nodes):
        tap = Tap()
        name = f"{prefix}_{i}"
        gm.add_submodule(name, tap)
        with gm.graph.inserting_after(n):
            t = gm.graph.call_module(name, (n,))
        n.replace_all_uses_with(t, delete_user_cb=lambda u, t=t: u is not t)
        taps.append(tap)
    gm.recompile()
    return taps
