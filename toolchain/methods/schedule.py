"""Fitting a method's schedule into a time budget (``--time-budget 15m``).

A method describes its long work as :class:`Phase` entries (:meth:`~.registry.Method.phases`):
``steps`` optimizer steps of ``images`` images each, every image costing ``cost`` forward+backward
passes of the FP model, and the settings (:class:`Knob`) that shrink the phase, in the order they
should give way. :func:`probe_pass_seconds` times one forward+backward of the FP model per image on
this machine, at the model's real input size; :func:`fit_schedule` multiplies them out and, when
the estimate exceeds the budget, lowers the knobs (never below their floors) until it fits. Phases
whose artifact is already cached cost nothing and are left alone (their settings key the cache).

The estimate is a first-order model (time linear in images × passes); the run log records the
estimate beside the measured wall time (``log.json`` → ``schedule``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.errors import ConfigError
from .config import Settings


@dataclass(frozen=True)
class Knob:
    """A setting that scales a phase (a dotted path into the config), never set below ``floor``;
    values are rounded down to a multiple of ``multiple`` (keeps cache keys stable across runs)."""

    path: str
    floor: int
    multiple: int = 1


@dataclass(frozen=True)
class Phase:
    """One stretch of a method's work.

    Attributes:
        name: shown in the plan, e.g. "synthesis".
        steps: optimizer steps.
        images: images per step.
        cost: FP-model forward+backward passes per image per step (e.g. ~1 for BN-statistics
            synthesis, more when a quantized student trains beside the teacher).
        knobs: the settings that shrink it, first to give way first.
        cached: True when its artifact is already stored (costs nothing; not scaled).
    """

    name: str
    steps: int
    images: int
    cost: float
    knobs: tuple[Knob, ...] = ()
    cached: bool = False

    def seconds(self, pass_s: float) -> float:
        return 0.0 if self.cached else self.steps * self.images * self.cost * pass_s


@dataclass(frozen=True)
class Change:
    """A setting the fit lowered: ``path`` from ``old`` to ``new``."""

    path: str
    old: Any
    new: Any

    def to_dict(self) -> dict:
        return {"path": self.path, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class SchedulePlan:
    """What :func:`fit_schedule` decided (``log.json`` → ``schedule``; printed before the work).

    Attributes:
        budget_s: the time budget in seconds (None: no budget, estimate only).
        pass_s: measured seconds of one FP forward+backward per image.
        phases: (name, estimated seconds, cached) of each phase after the fit.
        estimate_s: their total.
        changes: the settings lowered to fit.
        fits: whether the estimate is within the budget (False when the floors alone exceed it).
        costs: the method's own measured costs (:meth:`~.registry.Method.probe_costs`), in FP-pass
            units per image.
    """

    budget_s: float | None
    pass_s: float
    phases: tuple[tuple[str, float, bool], ...]
    estimate_s: float
    changes: tuple[Change, ...] = field(default_factory=tuple)
    fits: bool = True
    costs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"budget_s": self.budget_s, "pass_ms": round(self.pass_s * 1e3, 4),
                "estimate_s": round(self.estimate_s, 1), "fits": self.fits,
                "phases": [{"name": n, "estimate_s": round(s, 1), "cached": c} for n, s, c in self.phases],
                "changes": [c.to_dict() for c in self.changes],
                "costs": {k: round(v, 2) for k, v in self.costs.items()}}

    def summary(self) -> str:
        """One line: the estimate, the budget, what was scaled."""
        parts = ", ".join(f"{n} {format_duration(s)}" + (" (cached)" if c else "") for n, s, c in self.phases)
        line = f"schedule: about {format_duration(self.estimate_s)} ({parts})"
        if self.budget_s is not None:
            line += f" for a {format_duration(self.budget_s)} budget"
        if self.changes:
            line += "; scaled " + ", ".join(f"{c.path} {c.old}→{c.new}" for c in self.changes)
        if not self.fits:
            line += "; the settings' floors alone exceed the budget"
        return line


#: FP-pass units per image of a distillation step (teacher forward ≈ 0.3, fake-quantized student
#: forward+backward ≈ 1.7) and of a generator step of a max-min game (teacher and student
#: forward+backward through the generated images)
DISTILL_STEP_COST = 2.0
GENERATOR_STEP_COST = 2.7
#: FP-pass units per image of one reconstruction step summed over the blocks (each block's FP and
#: fake-quantized forward, its backward through the rounding and step-size parameters, and the
#: per-step overhead of small blocks): measured 5.2 on ResNet-20 (gznq W4A4 + adaround, 1,000 steps,
#: 113 s estimated at 2.5 vs 235 s run, idle 2-core EPYC; docs/time_budget.md)
RECONSTRUCTION_STEP_COST = 5.0

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds of a duration such as ``"15m"``, ``"1h30m"``, ``"90s"``, ``"600"`` (seconds);
    ``None``, ``"none"``, ``"off"`` or ``0`` → None (no budget).

    Raises:
        ConfigError: anything else.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) if text > 0 else None
    s = str(text).strip().lower()
    if s in ("", "none", "off", "0"):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s) if float(s) > 0 else None
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", s)
    if not parts or "".join(a + b for a, b in parts) != s.replace(" ", ""):
        raise ConfigError(f"time budget must look like 15m, 1h30m, 90s or a number of seconds, got {text!r}",
                          "e.g. --time-budget 15m; none for no budget")
    return sum(float(v) * _UNITS[u] for v, u in parts)


def format_duration(seconds: float) -> str:
    """``"4 min 10 s"`` / ``"35 s"`` / ``"1 h 05 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def best_seconds(fn: Callable[[], object], device, repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` timed calls of ``fn`` after one warm-up call (the least
    disturbed by other work); CUDA work is synchronized before each clock read."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def probe_pass_seconds(model: torch.nn.Module, input_shape, device, batch: int = 16, repeats: int = 3) -> float:
    """Seconds per image of one forward+backward (gradient w.r.t. the input, as synthesis does)
    of ``model`` at ``batch`` images of ``input_shape`` (C, H, W) on ``device``
    (:func:`best_seconds` of the pass, divided by ``batch``)."""
    x = torch.randn(batch, *input_shape, device=device, requires_grad=True)

    def once():
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().square().mean().backward()

    return best_seconds(once, device, repeats) / batch


def _get(cfg: Settings, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _with(cfg: Settings, path: str, value) -> Settings:
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _with(getattr(cfg, head), rest, value)})


def valid_duration(text) -> bool:
    """Whether :func:`parse_duration` accepts ``text``."""
    try:
        parse_duration(text)
    except ConfigError:
        return False
    return True


def synthesis_phase(name: str, s, cached: bool, cost: float = 1.0, prefix: str = "synthesis") -> Phase:
    """The phase of a BN-statistics synthesis with settings ``s`` (``num_images``, ``batch_size``,
    ``iterations``): fewer images first (down to 32), then fewer steps per batch (down to 20)."""
    return Phase(name, s.iterations * -(-s.num_images // s.batch_size), min(s.batch_size, s.num_images), cost,
                 (Knob(f"{prefix}.num_images", min(32, s.num_images), 8),
                  Knob(f"{prefix}.iterations", min(20, s.iterations), 10)), cached)


def fit_schedule(cfg: Settings, phases_of: Callable[[Settings], list[Phase]], budget_s: float | None,
                 pass_s: float, costs: dict[str, float] | None = None) -> tuple[Settings, SchedulePlan]:
    """Lower ``cfg``'s knobs until the estimated duration fits ``budget_s``.

    Each knob in turn (phases in order, their knobs in order) is set to the value that would bring
    the total within the budget if its phase shrank in proportion, rounded down to its multiple and
    kept at or above its floor; the phases are re-evaluated after every change.

    Args:
        cfg: the method's config.
        phases_of: ``cfg -> phases`` (:meth:`~.registry.Method.phases`).
        budget_s: seconds, or None for an estimate without changes.
        pass_s: :func:`probe_pass_seconds`.
        costs: the method's own measured costs the phases were built with (recorded in the plan).

    Returns:
        (the config to run, the plan).
    """
    changes: list[Change] = []

    def total(c):
        return sum(p.seconds(pass_s) for p in phases_of(c))

    if budget_s is not None:
        for i, phase in enumerate(phases_of(cfg)):
            for knob in phase.knobs:
                est = total(cfg)
                if est <= budget_s:
                    break
                current = phases_of(cfg)[i]
                if current.cached:
                    break
                phase_s = current.seconds(pass_s)
                keep = max(phase_s - (est - budget_s), 0.0) / phase_s if phase_s else 1.0
                old = _get(cfg, knob.path)
                new = max(knob.floor, math.floor(old * keep / knob.multiple) * knob.multiple)
                if new < old:
                    cfg = _with(cfg, knob.path, type(old)(new))
                    changes.append(Change(knob.path, old, type(old)(new)))
    phases = phases_of(cfg)
    est = sum(p.seconds(pass_s) for p in phases)
    plan = SchedulePlan(budget_s, pass_s, tuple((p.name, p.seconds(pass_s), p.cached) for p in phases), est,
                        tuple(changes), budget_s is None or est <= budget_s * 1.001, dict(costs or {}))
    return cfg, plan  # dataclasses.replace re-ran the settings' checks on every changed value
