"""The run's typed report: :class:`RunReport` (``zqtool run --json``) and its torch-side parts,
:class:`ParityResult` (``parity.json``) and the ``quantize`` / ``artifacts`` sections (torch-free).

As for :mod:`toolchain.verify.results`, ``to_dict()`` is the JSON exactly as it has always been
written and ``from_dict()`` reads it back, so the CLI, ``compare`` and scripts read reports
without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .verify.results import Record, VerifyReport, omitted_if_none

#: parity's onnxruntime optimization levels, in the order a report lists them
PARITY_LEVELS = ("off", "on", "basic", "extended")


@dataclass(frozen=True)
class ParityLevel(Record):
    """Torch simulation vs onnxruntime at one optimization level (see
    :func:`toolchain.export.parity.check_parity`): % top-1 agreement, % bit-identical logits,
    differences in logit units and in output LSBs. With no inputs (``n`` 0) only the agreement,
    difference and ``n`` keys are written, as None/0."""

    reference: str | None = omitted_if_none()
    agreement_top1: float | None = None
    identical: float | None = omitted_if_none()
    max_abs_diff: float | None = None
    max_diff_lsb: float | None = None
    mean_diff_lsb: float | None = None
    lsb: float | None = omitted_if_none()
    n: int = 0
    #: the first differing tensor (:func:`toolchain.export.divergence.first_divergence`; None if none found)
    first_difference: dict | None = omitted_if_none()

    @property
    def diverged(self) -> bool:
        """Compared with the integer-exact simulation and not bit-identical (then the report says
        where the two first differ, ``first_difference``)."""
        return self.reference == "exact" and self.identical is not None and self.identical < 100.0

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.diverged and "first_difference" not in d:
            d["first_difference"] = None
        return d


@dataclass(frozen=True)
class ParityResult(Record):
    """``{level: ParityLevel}`` for each optimization level checked (``off`` / ``on`` for "both")."""

    off: ParityLevel | None = omitted_if_none()
    on: ParityLevel | None = omitted_if_none()
    basic: ParityLevel | None = omitted_if_none()
    extended: ParityLevel | None = omitted_if_none()

    def levels(self) -> dict[str, ParityLevel]:
        """The levels checked, in report order."""
        return {lv: getattr(self, lv) for lv in PARITY_LEVELS if getattr(self, lv) is not None}


@dataclass(frozen=True)
class Recipe(Record):
    """Where a method's settings came from: the recipe file and its budget table."""

    file: str | None
    budget: str | None


@dataclass(frozen=True)
class LayerWidth(Record):
    """One layer of a mixed-precision plan: ``name`` (module path), ``role`` ("", "first", "last",
    "first+last"), ``weights`` (codes), ``allocated`` (its width was chosen, else kept at its role's),
    ``bits`` (the width asked), ``effective_bits`` (after the target's rule: 7 for 8 on ``portable``
    where 8-bit codes could saturate), ``bytes`` its codes count under the size model, ``errors`` its
    sensitivity at each of the plan's ``candidates`` (empty when not allocated)."""

    name: str
    role: str
    weights: int
    allocated: bool
    bits: int
    effective_bits: int
    bytes: float
    errors: tuple[float, ...]


@dataclass(frozen=True)
class MixedPrecisionPlan(Record):
    """The weight widths ``--size-budget`` chose (:func:`toolchain.methods.sensitivity.plan`).

    Sizes in bytes, counted by the size model ``size_model`` (:mod:`toolchain.quant.size`) on files
    of export format ``file_format``; ``exported``: the exported file of that format holds exactly these
    bytes (``int4``), else they are a count (``packed``: b/8 bytes a code). ``reference_bytes``: the
    all-8-bit model's; ``budget_bytes`` = ``size_budget`` × that; ``estimated_bytes`` (≤ the budget)
    and ``ratio`` (= estimated / reference): the chosen model's. ``avg_wbits``: weight bits averaged
    over the weights (effective widths). ``error``: the summed sensitivity (``metric``, measured on
    ``images`` synthetic images at the widths ``candidates``; ``skipped`` candidates save no byte under
    the size model and were not measured). ``layers``: one :class:`LayerWidth` per Conv/Linear layer,
    graph order. ``sensitivity_dir``: the cached measurements; ``sensitivity_s``: seconds they took.
    """

    size_budget: float
    size_model: str
    file_format: str
    exported: bool
    reference_bytes: float
    budget_bytes: float
    estimated_bytes: float
    ratio: float
    avg_wbits: float
    error: float
    metric: str
    candidates: tuple[int, ...]
    skipped: tuple[int, ...]
    images: int
    layers: tuple[LayerWidth, ...]
    sensitivity_dir: str | None = omitted_if_none()
    sensitivity_s: float | None = omitted_if_none()

    @property
    def label(self) -> str:
        """Short form for tables: ``mp 0.60 (avg 5.1 b)``."""
        return f"mp {self.size_budget:.2f} (avg {self.avg_wbits:.1f} b)"

    def widths(self) -> dict[str, int]:
        """Layer path → the width asked."""
        return {l.name: l.bits for l in self.layers}


@dataclass(frozen=True)
class QuantizeSection(Record):
    """The run report's ``quantize`` section: how the quantized model was made (``quant.json``).

    ``cached``: read from the store, not built by this run; ``wall_s``: the method's run when it was
    built; ``method_s``: its cost from scratch (reused cached artifacts' build seconds added, per
    artifact in ``reused``); ``scheme``: :meth:`~toolchain.quant.scheme.QuantScheme.to_dict`;
    ``float_ops`` / ``unknown_ops``: op → count run in float between DequantizeLinear and QuantizeLinear;
    ``mixed_precision``: the :class:`MixedPrecisionPlan` of a ``--size-budget`` run (absent otherwise);
    ``reconstruct``: the block reconstruction the method ended with (``--set reconstruct=…``; absent
    for "none"); ``bias_correction``: True when the biases were corrected (absent otherwise);
    ``label``: ``method``, ``method+bc``, ``method+adaround``, ``method+bc+adaround``, as ``compare
    --methods`` names it.
    """

    method: str
    budget: str
    recipe: Recipe | None
    cached: bool
    scheme: dict[str, Any]
    seed: int
    wall_s: float | None
    method_s: float | None
    reused: dict[str, float]
    device: str | None
    float_ops: dict[str, int]
    unknown_ops: dict[str, int]
    mixed_precision: MixedPrecisionPlan | None = omitted_if_none()
    reconstruct: str | None = omitted_if_none()
    bias_correction: bool | None = omitted_if_none()

    def __post_init__(self):
        if self.reconstruct == "none":  # one spelling of "no reconstruction" in reports
            object.__setattr__(self, "reconstruct", None)
        if not self.bias_correction:  # one spelling of "not corrected"
            object.__setattr__(self, "bias_correction", None)

    @property
    def label(self) -> str:
        steps = ["bc"] * bool(self.bias_correction) + [self.reconstruct] * (self.reconstruct is not None)
        return "+".join([self.method, *steps])


@dataclass(frozen=True)
class Artifacts(Record):
    """The run report's ``artifacts`` section: the stage directories and the two ONNX files."""

    fp: str
    q: str
    onnx: str
    qdq: str
    fp32: str


#: the keys a run report adds after the verify report's
RUN_SECTIONS = ("quantize", "parity", "artifacts")


@dataclass(frozen=True)
class RunReport:
    """What :func:`toolchain.pipeline.run` returns: the verify report (its ``warnings`` extended with
    the run's), then ``quantize``, ``parity`` (None when skipped) and ``artifacts``.

    ``to_dict()`` is one flat JSON object: the verify report's keys followed by those three.
    """

    verify: VerifyReport
    quantize: QuantizeSection
    parity: ParityResult | None
    artifacts: Artifacts

    def to_dict(self) -> dict[str, Any]:
        return {**self.verify.to_dict(), "quantize": self.quantize.to_dict(),
                "parity": None if self.parity is None else self.parity.to_dict(),
                "artifacts": self.artifacts.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunReport":
        """Read a ``zqtool run --json`` report back.

        Raises:
            ValueError: ``d`` is not a run report (not a mapping, or no ``quantize`` / ``artifacts``).
        """
        if not isinstance(d, Mapping) or "quantize" not in d or "artifacts" not in d:
            raise ValueError("not a run report (no 'quantize' and 'artifacts' sections)")
        rest = {k: v for k, v in d.items() if k not in RUN_SECTIONS}
        parity = d.get("parity")
        return cls(verify=VerifyReport.from_dict(rest), quantize=QuantizeSection.from_dict(d["quantize"]),
                   parity=None if parity is None else ParityResult.from_dict(parity),
                   artifacts=Artifacts.from_dict(d["artifacts"]))


@dataclass(frozen=True)
class SimulationResult(Record):
    """Accuracy of the torch simulation of a quantized model that has no integer deployment (the
    ``paper`` scheme, :mod:`toolchain.quant.protocol`), beside the FP model on the same images.

    ``top1`` / ``top5`` and ``fp_top1`` / ``fp_top5`` in % (0..100); ``agreement_top1``: % of images
    on which both models' top-1 classes agree; ``simulation``: what computed the quantized logits
    (fake-quant in float32 torch); ``reason``: why nothing was exported.
    """

    n_images: int
    top1: float
    top5: float
    fp_top1: float
    fp_top5: float
    agreement_top1: float
    simulation: str
    reason: str


@dataclass(frozen=True)
class SimulatedRunReport:
    """What :func:`toolchain.pipeline.run` returns for a scheme that is simulation only: the
    simulation's accuracy, the ``quantize`` section and the quantize run directory (no ONNX files).
    ``to_dict()``: ``{"simulation": …, "quantize": …, "q_dir": …}``."""

    simulation: SimulationResult
    quantize: QuantizeSection
    q_dir: str

    def to_dict(self) -> dict[str, Any]:
        return {"simulation": self.simulation.to_dict(), "quantize": self.quantize.to_dict(), "q_dir": self.q_dir}
