"""Bit allocation of mixed precision: one weight width per layer, the least total sensitivity under a
size budget. torch-free (numpy).

The problem is HAWQ-V3's integer linear program (Yao et al., ICML 2021, sec. 3.4, eq. 6): choose
one option ``j`` per layer ``l`` (a width with its bytes ``s_lj`` and its measured sensitivity
``Ω_lj``) to minimise ``Σ_l Ω_lj`` subject to ``fixed + Σ_l s_lj ≤ budget``. Sensitivities add up
across layers, the assumption ZeroQ (Cai et al., CVPR 2020, sec. 3.2, eq. 4) and HAWQ make. It is a
multiple-choice knapsack; :func:`allocate` solves it exactly (no ILP solver, no discretized sizes)
with ZeroQ's Pareto-frontier dynamic program: after each layer, keep the (bytes, sensitivity) states
no other state beats on both and that can still meet the budget with the remaining layers at their
smallest options; the last state under the budget is the optimum, traced back to each layer's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One way to quantize a layer: ``bits`` (its weight width), ``bytes`` it counts under the size
    model, ``error`` its sensitivity (≥ 0; the output error with this layer alone at ``bits``)."""

    bits: int
    bytes: float
    error: float


@dataclass(frozen=True)
class Allocation:
    """The chosen widths.

    Attributes:
        bits: one width per layer, in the order the layers were given.
        bytes: ``fixed_bytes`` plus the chosen options' bytes (≤ ``budget_bytes``).
        error: the sum of the chosen options' sensitivities.
        budget_bytes: the budget the choice meets.
        frontier: how many Pareto-optimal (bytes, sensitivity) states the last layer left (a measure
            of the search's size).
    """

    bits: tuple[int, ...]
    bytes: float
    error: float
    budget_bytes: float
    frontier: int

    def to_dict(self) -> dict:
        return {"bits": list(self.bits), "bytes": self.bytes, "error": self.error,
                "budget_bytes": self.budget_bytes, "frontier": self.frontier}


def check_size_budget(fraction) -> float:
    """``--size-budget F`` as a float in (0, 1].

    Raises:
        ConfigError: not a number in (0, 1].
    """
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(fraction, bool) or not 0.0 < f <= 1.0:
        raise ConfigError(f"--size-budget must be a fraction in (0, 1], got {fraction!r}",
                          "it bounds the model's bytes by F × the all-8-bit model's: e.g. --size-budget 0.6")
    return f


def allocate(options: Sequence[Sequence[Option]], budget_bytes: float, fixed_bytes: float = 0.0, *,
             reference_bytes: float | None = None, infeasible_hint: str | None = None) -> Allocation:
    """One option per layer minimising the total sensitivity with ``fixed + Σ bytes ≤ budget_bytes``.

    Exact (a Pareto-frontier dynamic program; see the module docstring). Ties in sensitivity go to
    the smaller model.

    Args:
        options: per layer, its options (at least one each).
        budget_bytes: the most bytes the model may count.
        fixed_bytes: bytes that do not depend on the choice (per-channel tensors, the graph, ...).
        reference_bytes: what the budget is a fraction of (the all-8-bit model's bytes); only to word
            the error of an infeasible budget as fractions.
        infeasible_hint: what else may make room, added to that error's hint (default: lower widths).

    Returns:
        The :class:`Allocation`.

    Raises:
        ConfigError: a layer without options, a negative sensitivity, or a budget below the smallest
            model the options allow (every layer at its smallest option).
    """
    if any(len(o) == 0 for o in options):
        raise ConfigError("a layer has no candidate width to choose from", "give at least one width per layer")
    costs = [np.asarray([o.bytes for o in opts], dtype=np.float64) for opts in options]
    errors = [np.asarray([o.error for o in opts], dtype=np.float64) for opts in options]
    if any((e < 0).any() or not np.isfinite(e).all() for e in errors):
        raise ConfigError("layer sensitivities must be finite and >= 0", "measure them again")
    smallest = float(fixed_bytes) + sum(float(c.min()) for c in costs)
    if smallest > budget_bytes:
        raise _infeasible(budget_bytes, smallest, reference_bytes, infeasible_hint)
    # the fewest bytes the layers after l can take: a state that cannot meet the budget with them is dropped
    rest = np.concatenate([np.cumsum([c.min() for c in costs][::-1])[::-1], [0.0]])
    state_b, state_e = np.array([float(fixed_bytes)]), np.array([0.0])
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for layer, (c, e) in enumerate(zip(costs, errors)):
        nb = (state_b[:, None] + c[None, :]).ravel()
        ne = (state_e[:, None] + e[None, :]).ravel()
        parent, choice = np.divmod(np.arange(nb.size), c.size)
        ok = nb + rest[layer + 1] <= budget_bytes
        nb, ne, parent, choice = nb[ok], ne[ok], parent[ok], choice[ok]
        order = np.lexsort((ne, nb))  # by bytes, then by error
        nb, ne, parent, choice = nb[order], ne[order], parent[order], choice[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(ne)[:-1]])
        keep = ne < best_before  # strictly better than every smaller (or equal-size) state
        state_b, state_e = nb[keep], ne[keep]
        back.append((parent[keep], choice[keep]))
    i = int(np.argmin(state_e))  # every state left meets the budget; errors fall as bytes grow
    total_b, total_e, frontier = float(state_b[i]), float(state_e[i]), int(state_b.size)
    picks = []
    for parent, choice in reversed(back):
        picks.append(int(choice[i]))
        i = int(parent[i])
    picks.reverse()
    return Allocation(bits=tuple(int(options[l][j].bits) for l, j in enumerate(picks)), bytes=total_b,
                      error=total_e, budget_bytes=float(budget_bytes), frontier=frontier)


def _infeasible(budget: float, smallest: float, reference: float | None, more: str | None) -> ConfigError:
    more = more or "or lower candidate widths (--set mp.candidates=...)"
    if reference:
        need = _ceil(smallest / reference, 3)  # the least F that fits, at the 3 decimals shown
        return ConfigError(
            f"--size-budget {budget / reference:.3f} is below the smallest model the candidate widths allow "
            f"({need:.3f} of the all-8-bit model's {reference:,.0f} bytes, every layer at its lowest width)",
            f"use --size-budget {need:.3f} or more, {more}")
    return ConfigError(f"a size budget of {budget:,.0f} bytes is below the smallest model the candidate widths "
                       f"allow ({smallest:,.0f} bytes)", f"raise the budget, {more}")


def _ceil(x: float, digits: int) -> float:
    """``x`` rounded up at ``digits`` decimals."""
    s = 10 ** digits
    return float(np.ceil(x * s - 1e-9) / s)
