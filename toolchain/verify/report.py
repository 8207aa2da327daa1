"""Render a verify report (the dict :func:`~toolchain.verify.verify` returns) as a table.

A classifier's report gets top-1/top-5 columns; a segmentation model's (one with a
``segmentation`` section) gets pixel accuracy and mIoU against the masks, per-pixel agreement
and mIoU against the FP32 model.
"""

from __future__ import annotations

_COLUMNS = ("model", "top-1 %", "top-5 %", "agree %", "p50 ms", "p90 ms", "size", "integer convs")
_SEG_COLUMNS = ("model", "pixel acc %", "mIoU %", "agree %", "mIoU vs FP32 %", "p50 ms", "p90 ms", "size",
                "integer convs")


def report_columns(report: dict) -> tuple[str, ...]:
    """The table header: the classification columns, or the segmentation ones."""
    return _SEG_COLUMNS if report.get("segmentation") else _COLUMNS


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


def report_rows(report: dict) -> list[tuple[str, ...]]:
    """The table body: one row for FP32, one for the quantized model (strings), in the
    columns of :func:`report_columns`."""
    lat = report.get("latency_ms") or {}
    ops = report.get("integer_ops") or {}
    seg = report.get("segmentation")
    rows = []
    for key, label in (("fp32", "FP32"), ("quantized", "quantized")):
        acc = report.get(key) or {}
        ms = lat.get(key) or {}
        if key == "quantized":
            agree = _pct(report.get("agreement_top1"))
            convs = f"{ops.get('conv_integer', '?')}/{ops.get('conv_total', '?')}" if ops else "—"
        else:
            agree, convs = "", "—"
        tail = (_ms(ms.get("p50")), _ms(ms.get("p90")), format_bytes((report.get("bytes") or {}).get(key)), convs)
        if seg:
            m = seg.get(key) or {}
            vs_fp = _pct(seg.get("miou_vs_fp32")) if key == "quantized" else ""
            rows.append((label, _pct(m.get("pixel_accuracy")), _pct(m.get("miou")), agree, vs_fp, *tail))
        else:
            rows.append((label, _pct(acc.get("top1")), _pct(acc.get("top5")), agree, *tail))
    return rows


def _sample_line(report: dict) -> str:
    """First footer line up to the latency: sample size and what the quality is measured against."""
    seg = report.get("segmentation")
    if not seg:
        return (f"{report.get('n_images', '?')} images; quantized top-1 ± "
                f"{report.get('top1_stderr', float('nan')):.2f} points (1 s.e.)")
    hw = seg.get("output_hw") or ["?", "?"]
    if seg.get("masks"):
        truth = (f"pixel accuracy and mIoU against the masks ({seg.get('labelled_pixels', '?')} labelled "
                 f"pixels, {seg.get('ignore_index', 255)} ignored)")
    else:
        truth = "no masks: quality measured against the FP32 model only"
    return (f"{report.get('n_images', '?')} images, {seg.get('pixels', '?')} pixels per model "
            f"({hw[0]}x{hw[1]} outputs, {seg.get('num_classes', '?')} classes); agree = per-pixel top-1; {truth}")


def report_footer(report: dict) -> list[str]:
    """Lines under the table: sample size and its standard error (classifiers) or pixel counts and
    the reference (segmentation), runtime, float nodes, notes."""
    lat = report.get("latency_ms") or {}
    ops = report.get("integer_ops") or {}
    lines = [
        f"{_sample_line(report)}; latency at batch 1, {threads_text(lat.get('threads', '?'))}, "
        f"{lat.get('runs', '?')} runs after {lat.get('warmup', '?')} warm-up",
        f"onnxruntime {report.get('ort_version', '?')} ({', '.join(report.get('providers') or [])}); "
        f"integer ops read from the {ops.get('inspected_level', '?')} graph",
    ]
    floats = ops.get("float_nodes") or []
    if floats:
        shown = ", ".join(f"{d['name'] or '?'} ({d['op_type']})" for d in floats[:6])
        more = f", … {len(floats) - 6} more" if len(floats) > 6 else ""
        lines.append(f"compute nodes left in float: {shown}{more}")
    cpu = report.get("machine") or {}
    if cpu:
        lines.append(f"CPU: {cpu.get('model', '?')} ({cpu.get('arch', '?')}; "
                     f"{' '.join(cpu.get('flags') or []) or 'no ISA flags read'})")
    lines += [f"note: {n}" for n in report.get("notes") or []]
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    return lines


def report_text(report: dict) -> str:
    """The report as a plain-text table (no dependencies), for logs and the device runner."""
    columns = report_columns(report)
    rows = [columns, *report_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [fmt(rows[0]), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows[1:])]
    return "\n".join(out + [""] + report_footer(report))


def render_report(report: dict):
    """The report as a rich renderable (a table and footnotes), or plain text without rich.

    Args:
        report: the dict returned by ``verify``.

    Returns:
        ``rich.console.Group`` when ``rich`` is installed, else the ``report_text`` string.
    """
    try:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        return report_text(report)
    table = Table(title=f"zqtool verify — {(report.get('files') or {}).get('quantized', '')}")
    for i, col in enumerate(report_columns(report)):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in report_rows(report):
        table.add_row(*row)
    return Group(table, Text("\n".join(report_footer(report)), style="dim"))
