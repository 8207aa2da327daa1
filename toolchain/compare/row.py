"""One results row per (method, bit width) pair: :class:`CompareRow`, built from the pair's run
reports (:func:`row_from_reports`) or read back from ``compare.json`` / ``zqtool run --json``
files (:func:`load_rows`). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..artifacts import read_json
from ..reports import Artifacts, ParityResult, RunReport
from ..verify.results import Latency, Record, omitted_if_none

#: ``status`` of a row: measured, raised an error, or not run yet
STATUSES = ("ok", "failed", "pending")


def measured():
    """A row field that only a row with status ``ok`` carries (left out of the others' JSON)."""
    return field(default=None, metadata={"measured": True})


@dataclass(frozen=True)
class LatencyRow(Record):
    """Batch-1 p50 latency of both models at one thread count, ms; ``ratio`` = QDQ / FP32."""

    threads: int
    fp32_p50_ms: float | None
    qdq_p50_ms: float | None
    ratio: float | None
    runs: int | None

    @classmethod
    def of(cls, lat: Latency) -> "LatencyRow":
        """The row entry of a verify report's ``latency_ms`` section."""
        f = None if lat.fp32 is None else lat.fp32.p50
        q = None if lat.quantized is None else lat.quantized.p50
        return cls(threads=lat.threads, fp32_p50_ms=f, qdq_p50_ms=q,
                   ratio=q / f if f and q is not None else None, runs=lat.runs)


@dataclass(frozen=True)
class CompareRow(Record):
    """One pair's results row (``compare.json``'s ``rows``).

    Units: ``fp32_top1`` / ``top1`` / ``top1_stderr`` / ``top1_drop`` (= FP32 − quantized) and
    ``agreement_top1`` in % of the evaluated images; ``quantize_wall_s`` (this run of the method)
    and ``quantize_method_s`` (its cost from scratch, cached synthetic sets included) in seconds;
    ``latency`` one :class:`LatencyRow` per thread count; ``bytes_fp32`` / ``bytes_qdq`` the ONNX
    file sizes. Fields after ``error`` are measured (a ``failed`` or ``pending`` row has none of them
    in its JSON); a failed row has ``error`` and ``error_type``; ``pair_wall_s`` is set once the pair ran.

    A mixed-precision row (``--size-budget``) has ``size_budget`` (F) and ``wbits`` None; once measured,
    ``avg_wbits`` (weight bits averaged over the weights), ``mp_bytes`` / ``mp_ratio`` (the bytes the
    size model ``mp_size_model`` counts and their fraction of the all-8-bit model's) and ``mp_widths``
    (layer → bits). Uniform rows have none of these keys.
    """

    model: str | None
    method: str
    wbits: int | None
    abits: int | None
    first_last_bits: int | None
    status: str
    error: str | None = None
    n_images: int | None = measured()
    fp32_top1: float | None = measured()
    top1: float | None = measured()
    top1_stderr: float | None = measured()
    top1_drop: float | None = measured()
    agreement_top1: float | None = measured()
    fp32_top5: float | None = measured()
    top5: float | None = measured()
    conv_integer: int | None = measured()
    conv_total: int | None = measured()
    quantize_wall_s: float | None = measured()
    quantize_method_s: float | None = measured()
    budget: str | None = measured()
    device: str | None = measured()
    latency: tuple[LatencyRow, ...] | None = measured()
    bytes_fp32: int | None = measured()
    bytes_qdq: int | None = measured()
    parity: ParityResult | None = measured()
    ort_version: str | None = measured()
    artifacts: Artifacts | None = measured()
    error_type: str | None = omitted_if_none()
    pair_wall_s: float | None = omitted_if_none()
    size_budget: float | None = omitted_if_none()
    avg_wbits: float | None = omitted_if_none()
    mp_bytes: float | None = omitted_if_none()
    mp_ratio: float | None = omitted_if_none()
    mp_size_model: str | None = omitted_if_none()
    mp_widths: dict[str, int] | None = omitted_if_none()

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"row status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def mixed(self) -> bool:
        """A mixed-precision (``--size-budget``) row."""
        return self.size_budget is not None

    @property
    def weights_label(self) -> str:
        """``W4`` for a uniform row; ``mp 0.60 (avg 5.1 b)`` (``mp 0.60`` before it ran) for a mixed one."""
        if not self.mixed:
            return f"W{self.wbits}"
        return f"mp {self.size_budget:.2f}" + (f" (avg {self.avg_wbits:.1f} b)" if self.avg_wbits is not None else "")

    @property
    def scheme_label(self) -> str:
        """``W4A4``, or ``mp 0.60 (avg 5.1 b) A8`` for a mixed-precision row."""
        return f"{self.weights_label} A{self.abits}" if self.mixed else f"W{self.wbits}A{self.abits}"

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not self.ok:
            for f in fields(self):
                if f.metadata.get("measured"):
                    d.pop(f.name, None)
        return d


def pending_row(model: str, method: str, bits: int, first_last_bits: int,
                size_budget: float | None = None) -> CompareRow:
    """The row of a pair not run yet (W = A = ``bits``; with ``size_budget``, A = ``bits`` and the weights
    mixed within that budget)."""
    return CompareRow(model=model, method=method, wbits=bits if size_budget is None else None, abits=bits,
                      first_last_bits=first_last_bits, status="pending", size_budget=size_budget)


def row_from_reports(reports: Sequence[RunReport], model: str | None = None) -> CompareRow:
    """One results row from the run reports of one pair (one report per thread count).

    Args:
        reports: what :func:`toolchain.pipeline.run` returns (``zqtool run --json``); the accuracy,
            sizes and parity are taken from the first, latency from each.
        model: the row's model name (default: the report's architecture).

    Returns:
        The row, status ``"ok"``.
    """
    r = reports[0]
    v, q, s = r.verify, r.quantize, r.quantize.scheme
    mp = q.mixed_precision
    fp, qt = v.fp32.top1, v.quantized.top1
    latency = tuple(LatencyRow.of(rep.verify.latency_ms)
                    for rep in sorted(reports, key=lambda x: x.verify.latency_ms.threads))
    return CompareRow(
        model=model or v.meta.arch, method=q.label, wbits=s["wbits"] if mp is None else None, abits=s["abits"],
        first_last_bits=s["first_last_bits"], status="ok", error=None, n_images=v.n_images,
        fp32_top1=fp, top1=qt, top1_stderr=v.top1_stderr, top1_drop=None if fp is None else fp - qt,
        agreement_top1=v.agreement_top1, fp32_top5=v.fp32.top5, top5=v.quantized.top5,
        conv_integer=v.integer_ops.conv_integer, conv_total=v.integer_ops.conv_total,
        quantize_wall_s=q.wall_s, quantize_method_s=q.method_s, budget=q.budget, device=q.device,
        latency=latency, bytes_fp32=v.bytes.fp32, bytes_qdq=v.bytes.quantized, parity=r.parity,
        ort_version=v.ort_version, artifacts=r.artifacts,
        **({} if mp is None else dict(size_budget=mp.size_budget, avg_wbits=mp.avg_wbits, mp_bytes=mp.estimated_bytes,
                                      mp_ratio=mp.ratio, mp_size_model=mp.size_model, mp_widths=mp.widths())))


def load_rows(paths: Iterable[str | Path]) -> list[CompareRow]:
    """Rows from ``compare.json`` files (in their order) and ``zqtool run --json`` reports
    (grouped per model/method/scheme/size budget, one row per group with latency at each thread count,
    sorted by model, method, bits descending, mixed-precision rows after the uniform one, larger budgets first).

    Raises:
        ValueError: a file that is neither a compare.json nor a run report; OSError: unreadable.
    """
    rows, groups = [], {}
    for p in paths:
        d = read_json(p)
        if isinstance(d, dict) and "rows" in d:
            rows += [CompareRow.from_dict(row) for row in d["rows"]]
            continue
        rep = RunReport.from_dict(d)
        q, s = rep.quantize, rep.quantize.scheme
        budget = None if q.mixed_precision is None else q.mixed_precision.size_budget
        key = (rep.verify.meta.arch or Path(p).stem, q.label, s["wbits"], s["abits"], s["first_last_bits"], budget)
        groups.setdefault(key, {})[rep.verify.latency_ms.threads] = rep
    for key in sorted(groups, key=lambda k: (k[0], k[1], -k[2], k[5] is not None, -(k[5] or 0))):
        rows.append(row_from_reports(list(groups[key].values()), model=key[0]))
    return rows
