"""Render a verify report (the :class:`~toolchain.verify.results.VerifyReport` that
:func:`~toolchain.verify.verify` returns) as a table.

A classifier's report gets top-1/top-5 columns; a segmentation model's (one with a
``segmentation`` section) gets pixel accuracy and mIoU against the masks, per-pixel agreement
and mIoU against the FP32 model.
"""

from __future__ import annotations

from .results import VerifyReport

_COLUMNS = ("model", "top-1 %", "top-5 %", "agree %", "p50 ms", "p90 ms", "size", "integer convs")
_SEG_COLUMNS = ("model", "pixel acc %", "mIoU %", "agree %", "mIoU vs FP32 %", "p50 ms", "p90 ms", "size",
                "integer convs")


def report_columns(report: VerifyReport) -> tuple[str, ...]:
    """The table header: the classification columns, or the segmentation ones."""
    return _SEG_COLUMNS if report.segmentation else _COLUMNS


def _pct(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def _ms(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def format_bytes(n: int | None) -> str:
    """Human-readable size: "812 B", "1.23 MiB"."""
    if n is None:
        return "—"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def threads_text(threads) -> str:
    """"1 thread", "4 threads", or "onnxruntime's default threads (all cores)" for 0."""
    if threads == 0:
        return "onnxruntime's default threads (all cores)"
    return f"{threads} thread" + ("" if threads == 1 else "s")


def report_rows(report: VerifyReport) -> list[tuple[str, ...]]:
    """The table body: one row for FP32, one for the quantized model (strings), in the
    columns of :func:`report_columns`."""
    seg, ops = report.segmentation, report.integer_ops
    rows = []
    for key, label in (("fp32", "FP32"), ("quantized", "quantized")):
        ms = getattr(report.latency_ms, key)
        if key == "quantized":
            agree, convs = _pct(report.agreement_top1), f"{ops.conv_integer}/{ops.conv_total}"
        else:
            agree, convs = "", "—"
        p50, p90 = (None, None) if ms is None else (ms.p50, ms.p90)
        tail = (_ms(p50), _ms(p90), format_bytes(getattr(report.bytes, key)), convs)
        if seg:
            m = getattr(seg, key)
            vs_fp = _pct(seg.miou_vs_fp32) if key == "quantized" else ""
            rows.append((label, _pct(m.pixel_accuracy), _pct(m.miou), agree, vs_fp, *tail))
        else:
            acc = getattr(report, key)
            rows.append((label, _pct(acc.top1), _pct(acc.top5), agree, *tail))
    return rows


def _sample_line(report: VerifyReport) -> str:
    """First footer line up to the latency: sample size and what the quality is measured against."""
    seg = report.segmentation
    if not seg:
        stderr = float("nan") if report.top1_stderr is None else report.top1_stderr
        return f"{report.n_images} images; quantized top-1 ± {stderr:.2f} points (1 s.e.)"
    hw = seg.output_hw or ("?", "?")
    if seg.masks:
        truth = (f"pixel accuracy and mIoU against the masks ({seg.labelled_pixels} labelled "
                 f"pixels, {seg.ignore_index} ignored)")
    else:
        truth = "no masks: quality measured against the FP32 model only"
    return (f"{report.n_images} images, {seg.pixels} pixels per model "
            f"({hw[0]}x{hw[1]} outputs, {seg.num_classes} classes); agree = per-pixel top-1; {truth}")


def report_footer(report: VerifyReport) -> list[str]:
    """Lines under the table: sample size and its standard error (classifiers) or pixel counts and
    the reference (segmentation), runtime, float nodes, notes."""
    lat, ops, cpu = report.latency_ms, report.integer_ops, report.machine
    lines = [
        f"{_sample_line(report)}; latency at batch 1, {threads_text(lat.threads)}, "
        f"{lat.runs} runs after {lat.warmup} warm-up",
        f"onnxruntime {report.ort_version} ({', '.join(report.providers)}); "
        f"integer ops read from the {ops.inspected_level} graph",
    ]
    floats = ops.float_nodes
    if floats:
        shown = ", ".join(f"{d.name or '?'} ({d.op_type})" for d in floats[:6])
        more = f", … {len(floats) - 6} more" if len(floats) > 6 else ""
        lines.append(f"compute nodes left in float: {shown}{more}")
    lines.append(f"CPU: {cpu.model} ({cpu.arch}; {' '.join(cpu.flags) or 'no ISA flags read'})")
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"warning: {w}" for w in report.warnings]
    return lines


def report_text(report: VerifyReport) -> str:
    """The report as a plain-text table (no dependencies), for logs and the device runner."""
    columns = report_columns(report)
    rows = [columns, *report_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [fmt(rows[0]), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows[1:])]
    return "\n".join(out + [""] + report_footer(report))


def render_report(report: VerifyReport):
    """The report as a rich renderable (a table and footnotes), or plain text without rich.

    Args:
        report: what ``verify`` returns (or a run report's ``verify`` part).

    Returns:
        ``rich.console.Group`` when ``rich`` is installed, else the ``report_text`` string.
    """
    try:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        return report_text(report)
    table = Table(title=f"zqtool verify — {report.files.quantized}")
    for i, col in enumerate(report_columns(report)):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in report_rows(report):
        table.add_row(*row)
    return Group(table, Text("\n".join(report_footer(report)), style="dim"))
