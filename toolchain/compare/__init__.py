"""``zqtool compare``: every (method, bit width) pair through load → quantize → export → verify,
and one results table that says which to ship.

Each pair is one :func:`toolchain.pipeline.run` per thread count, so every stage is served
from the content-keyed store when it exists: a compare that was interrupted (Ctrl-C, a
crash, a lost machine) redoes nothing that finished when it is run again with the same
arguments; it continues at the first unfinished stage of the first unfinished pair.

Written to ``out_dir``, each file atomically, after every finished pair (so a partial
compare can be read while it runs) and once more at the end:

- ``compare.json``: settings, environment and one row per pair (``status`` ``ok``,
  ``failed`` with ``error``, or ``pending``); ``complete`` is true once every pair ran;
- ``compare.md``: the markdown results table (README's columns);
- ``compare.png``: top-1 against bits, one line per method, FP32 as a reference line
  (needs matplotlib, ``pip install zqtool[plot]``; skipped with a warning otherwise);
- ``reports/<method>-<scheme tag>-t<threads>.json``: each pair's full report, as
  ``zqtool run --json`` writes it.

A pair that raises an exception (a :class:`~toolchain.core.errors.ZqError` such as a model a
method does not support, or an unexpected error) becomes a ``failed`` row carrying the
message, and the other pairs still run: one broken method must not cost the hours the
others took. ``KeyboardInterrupt`` stops the compare; the files stay as of the last
finished pair. With ``ZQTOOL_DEBUG=1`` unexpected (non-ZqError) exceptions propagate.

Row fields (units): ``fp32_top1``/``top1``/``top1_stderr``/``top1_drop`` (= FP32 − quantized)
and ``agreement_top1`` in percent of the evaluated images; ``quantize_wall_s`` (this run
of the method) and ``quantize_method_s`` (its cost from scratch, cached synthetic sets
included) in seconds; ``latency`` a list of ``{threads, fp32_p50_ms, qdq_p50_ms, ratio}``
(ratio = QDQ p50 / FP32 p50 at the same threads, batch 1); ``bytes_fp32``/``bytes_qdq``
the ONNX file sizes (:class:`~.row.CompareRow`).

The package, by concern: :mod:`.options` (the grid's options parsed and checked), :mod:`.grid`
(running the pairs: :func:`compare`), :mod:`.row` (a pair's row from its run reports),
:mod:`.result` (``compare.json``), :mod:`.render` (markdown, the terminal table, the plot).
"""

from .grid import compare
from .options import parse_bits, parse_methods, parse_threads, split_overrides
from .render import PLOT_HINT, compare_markdown, markdown_footer, markdown_table, render_rows, write_plot
from .result import JSON_NAME, MD_NAME, PNG_NAME, REPORTS_DIR, CompareResult, CompareSettings, environment
from .row import CompareRow, LatencyRow, load_rows, row_from_reports

__all__ = ["JSON_NAME", "MD_NAME", "PLOT_HINT", "PNG_NAME", "REPORTS_DIR", "CompareResult", "CompareRow",
           "CompareSettings", "LatencyRow", "compare", "compare_markdown", "environment", "load_rows",
           "markdown_footer", "markdown_table", "parse_bits", "parse_methods", "parse_threads", "render_rows",
           "row_from_reports", "split_overrides", "write_plot"]
