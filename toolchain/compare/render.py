"""A compare's rows rendered: the markdown table (``compare.md``, README's columns), the rich
terminal table, and the top-1-against-bits plot (``compare.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..artifacts import atomic_path
from .result import CompareResult
from .row import CompareRow

PLOT_HINT = "pip install zqtool[plot]"


def _f(v, fmt: str = ".2f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def _scheme_tag(r: CompareRow) -> str:
    """``W4A4 (8)``; a mixed-precision row ``mp 0.60 (avg 5.1 b), A8 (8)``."""
    if r.mixed:
        return f"{r.weights_label}, A{r.abits} ({r.first_last_bits})"
    return f"W{r.wbits}A{r.abits} ({r.first_last_bits})"


def _thread_counts(rows: Sequence[CompareRow]) -> list[int]:
    return sorted({lat.threads for r in rows for lat in r.latency or ()})


def _parity_cell(r: CompareRow) -> str:
    levels = r.parity.levels() if r.parity else {}
    return " / ".join(f"{levels[k].agreement_top1:.1f}%, "
                      f"{float('nan') if levels[k].max_diff_lsb is None else levels[k].max_diff_lsb:.0f} LSB"
                      for k in ("off", "on") if k in levels) or "–"


def markdown_table(rows: Sequence[CompareRow]) -> str:
    """The README results table (markdown) of ``rows`` (ok, failed and pending alike), in order.

    Columns: model, method, W/A (first/last; a mixed-precision row: its size budget and average weight
    bits), FP32 top-1, QDQ top-1 ± 1 s.e., Δ top-1 (QDQ −
    FP32), agree %, integer convs, quantize s (from scratch), one ``p50 ms FP32 → QDQ (ratio)``
    column per thread count found in the rows, MB FP32 → QDQ, parity (ORT opt off / on).
    """
    threads = _thread_counts(rows)
    head = ["model", "method", "W/A (first/last)", "FP32 top-1", "QDQ top-1", "Δ top-1", "agree %",
            "integer convs", "quantize s"] + [f"p50 ms FP32 → QDQ ({t} thr)" for t in threads] + \
           ["MB FP32 → QDQ", "parity (opt off / on)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lead = [str(r.model), str(r.method), _scheme_tag(r)]
        if not r.ok:
            what = r.status + (f": {r.error}" if r.error else "")
            cells = lead + [_f(r.fp32_top1), what.replace("|", "\\|").replace("\n", " ")] + \
                ["–"] * (len(head) - len(lead) - 2)
        else:
            fp, qt = r.fp32_top1, r.top1
            lat = {x.threads: x for x in r.latency or ()}
            lat_s = [f"{_f(lat[t].fp32_p50_ms)} → {_f(lat[t].qdq_p50_ms)} ({_f(lat[t].ratio)}×)"
                     if t in lat else "–" for t in threads]
            mb = (f"{r.bytes_fp32 / 1e6:.2f}" if r.bytes_fp32 else "–") + " → " + \
                 (f"{r.bytes_qdq / 1e6:.2f}" if r.bytes_qdq else "–")
            cells = lead + [_f(fp), f"{qt:.2f} ± {_f(r.top1_stderr)}",
                            "–" if fp is None else f"{qt - fp:+.2f}", _f(r.agreement_top1),
                            f"{r.conv_integer}/{r.conv_total}",
                            f"{r.quantize_method_s or 0:.0f}"] + lat_s + [mb, _parity_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_footer(rows: Sequence[CompareRow]) -> str:
    """One line under the table: images per model, onnxruntime version, what the columns mean."""
    n = {}
    for r in rows:
        if r.n_images:
            n.setdefault(r.model, r.n_images)
    ort = next((r.ort_version for r in rows if r.ort_version), "?")
    runs = next((x.runs for r in rows for x in r.latency or () if x.runs), "?")
    imgs = "; ".join(f"{m}: {k} images" for m, k in n.items()) or "no finished pair"
    return (f"{imgs}; onnxruntime {ort}. ± is one standard error of the QDQ top-1; Δ = QDQ − FP32 on "
            f"the same images; latency is the p50 of {runs} batch-1 runs, (ratio) = QDQ / FP32 at the same "
            "threads; quantize s is the method's cost from scratch (cached synthetic sets included).\n")


def compare_markdown(result: CompareResult) -> str:
    """``compare.md``: title, the command, the table, its footer, settings and environment."""
    s, rows = result.settings, result.rows
    done = sum(r.status != "pending" for r in rows)
    limit = f" (first {s.limit} images)" if s.limit else ""
    overrides = "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                          for m, o in (s.overrides or {}).items() if o)
    state = "complete" if result.complete else f"in progress: {done} of {len(rows)} pairs done"
    failed = result.failed
    lines = [f"# zqtool compare: {result.model_name}", ""]
    if result.command:
        lines += ["```", result.command, "```", ""]
    lines += [markdown_table(rows), markdown_footer(rows),
              f"Status: {state}" + (f", {len(failed)} failed" if failed else "") +
              (f"; this invocation took {result.wall_s:.0f} s" if result.wall_s is not None else "") + ".",
              "",
              f"Settings: model `{result.model}`, data `{result.data}`{limit}, budget {s.budget}, "
              f"seed {s.seed}, "
              f"first/last layer {s.first_last_bits}-bit, format {s.format}"
              + (" (qdq; mixed-precision rows: the file their size budget counts)" if s.format == "auto" else "")
              + (f", mixed-precision rows at size budgets {', '.join(f'{f:g}' for f in s.size_budgets)}"
                 if s.size_budgets else "") + ", "
              f"{s.latency_runs} latency runs, parity on {s.parity_images} images"
              + (f", settings {overrides}" if overrides else "") + ".",
              "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in result.environment.items()) + ".", ""]
    if result.plot:
        lines += [f"![top-1 against bits]({Path(result.plot).name})", ""]
    return "\n".join(lines)


def write_plot(rows: Sequence[CompareRow], path: str | Path, *, model_name: str, first_last_bits: int) -> str | None:
    """Write the PNG of top-1 (± 1 s.e.) against bits, one line per method, FP32 as a dashed line.

    matplotlib is imported here (Agg canvas, no global backend change). Returns None when the
    file was written, else a one-line warning (matplotlib missing, or no finished pair).
    """
    ok = [r for r in rows if r.ok]
    if not ok:
        return f"no finished pair: {Path(path).name} not written"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return f"matplotlib is not installed: {Path(path).name} skipped ({PLOT_HINT})"
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method in dict.fromkeys(r.method for r in ok):
        for mixed in (False, True):  # mixed-precision rows at their average weight bits, a series of their own
            pts = sorted((r.avg_wbits if mixed else r.wbits, r.top1, r.top1_stderr or 0.0)
                         for r in ok if r.method == method and r.mixed == mixed)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, marker="s" if mixed else "o", capsize=3,
                            linestyle=":" if mixed else "-", label=f"{method} mixed (avg weight bits)" if mixed else method)
    fps = [r.fp32_top1 for r in ok if r.fp32_top1 is not None]
    if fps:
        fp = sum(fps) / len(fps)
        ax.axhline(fp, color="black", linestyle="--", linewidth=1, label=f"FP32 ({fp:.2f}%)")
    ax.set_xticks(sorted({r.wbits for r in rows if not r.mixed} or {r.abits for r in rows}))
    ax.set_xlabel(f"bits (weights = activations; first/last layer {first_last_bits}-bit)")
    ax.set_ylabel("top-1 % (± 1 s.e.)")
    ax.set_title(f"{model_name}: QDQ top-1 on onnxruntime, {ok[0].n_images} images", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return None


def render_rows(rows: Sequence[CompareRow]):
    """A rich Table of ``rows`` for the terminal: the markdown's numbers in fewer, narrower
    columns (QDQ latency with its ratio to FP32; QDQ file size)."""
    from rich import box
    from rich.table import Table
    threads = _thread_counts(rows)
    table = Table(title=f"zqtool compare — {rows[0].model if rows else ''}", box=box.SIMPLE_HEAD,
                  padding=(0, 1), collapse_padding=True, pad_edge=False,
                  caption="drop = FP32 − QDQ top-1 (points); p50: QDQ batch-1 latency (ratio to FP32, same threads)")
    cols = ["method", "W/A", "FP32\ntop-1", "QDQ top-1\n± s.e.", "drop", "agree\n%", "quant.\ns"] + \
        [f"p50 ms\n{t} thr" for t in threads] + ["QDQ\nMB"]
    for i, c in enumerate(cols):
        table.add_column(c, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for r in rows:
        lead = [str(r.method), r.scheme_label]
        if not r.ok:
            style = "red" if r.status == "failed" else "dim"
            table.add_row(*lead, _f(r.fp32_top1), f"[{style}]{r.status}[/]", *[""] * (len(cols) - 4))
            continue
        lat = {x.threads: x for x in r.latency}
        table.add_row(*lead, _f(r.fp32_top1), f"{r.top1:.2f} ± {_f(r.top1_stderr)}",
                      _f(r.top1_drop), _f(r.agreement_top1, ".1f"), f"{r.quantize_method_s or 0:.0f}",
                      *[f"{_f(lat[t].qdq_p50_ms, '.3f')} ×{_f(lat[t].ratio)}" if t in lat else "–"
                        for t in threads],
                      _f(r.bytes_qdq / 1e6 if r.bytes_qdq else None))
    return table
