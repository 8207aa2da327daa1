"""Running the grid: every (method, bit width) pair through :func:`toolchain.pipeline.run`, the
files rewritten after each pair (see :mod:`toolchain.compare`)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from ..artifacts import Store, write_json, write_text
from ..core.errors import ConfigError, ZqError
from ..progress import null_progress
from .options import entry_settings, method_of, parse_bits, parse_methods, parse_size_budgets, parse_threads
from .render import compare_markdown, write_plot
from .result import JSON_NAME, MD_NAME, PNG_NAME, REPORTS_DIR, CompareResult, CompareSettings, environment
from .row import CompareRow, pending_row, row_from_reports


def compare(model: str | Path, data: str | Path, *, methods: Sequence[str], bits: Sequence[int],
            out_dir: str | Path, load_options: dict | None = None, first_last_bits: int = 8,
            target: str | None = None, budget: str = "cpu", overrides: dict[str, dict] | None = None, seed: int = 0,
            device: str = "auto", fmt: str | None = "qdq", threads: Sequence[int] = (1,), limit: int | None = None,
            latency_runs: int = 50, parity_images: int = 256, store: Store | None = None,
            command: str | None = None, plot: bool = True, progress=null_progress, on_stage=None,
            on_pair_start: Callable | None = None, on_pair: Callable | None = None,
            size_budgets: Sequence[float] = ()) -> CompareResult:
    """Run every (method, bits) pair through load → quantize → export → verify and write the tables.

    Pairs run method by method (so a method's bit-independent cache, e.g. bnstat's synthetic
    set, is built once), each verified at every thread count in ``threads``.

    Args:
        model, data: as for :func:`toolchain.pipeline.run` (a model file; an .npz or image folder).
        methods: registered method names, or ``METHOD+RECONSTRUCTION`` for the method ending with a
            block reconstruction (see :func:`~.options.parse_methods`).
        bits: bit widths; each pair is W=A=bits with first/last layers at ``first_last_bits``.
        target: deployment target of every pair's scheme (:mod:`toolchain.targets`; None = portable).
        out_dir: where compare.json / compare.md / compare.png / reports/ go (created).
        overrides: ``{entry: {key: value}}`` method settings (see :func:`~.options.split_overrides`;
            ``mp.`` keys are mixed-precision settings); an entry's own settings (``+adaround``) are added.
        fmt: export format of every pair; None: ``qdq``, and for mixed-precision rows the format whose
            file holds the bytes their budget counts (``int4`` by default).
        size_budgets: after each (method, bits) pair, one mixed-precision row per fraction F: activations
            at ``bits``, weights a width per layer within F × the all-8-bit model's bytes
            (:func:`toolchain.pipeline.mixed_precision_stage`).
        threads: onnxruntime intra-op thread counts (accuracy is measured at each; the row takes
            the first's accuracy and every latency).
        command: the command line, recorded in compare.json/md.
        plot: write compare.png.
        on_pair_start(index, total, method, bits, size_budget) / on_pair(row, index, total): called before and
            after each pair (0-based index; ``row`` a :class:`~.row.CompareRow`); ``on_stage`` and
            ``progress`` go to pipeline.run.

    Returns:
        The :class:`~.result.CompareResult` written to compare.json.

    Raises:
        ConfigError (bad method/bits/settings/budget/format; raised before any pair runs),
        InputFileError/ModelMismatchError/UnsafeModelError/UnsupportedModelError (the model
        cannot be loaded), DataError (the data cannot be opened), KeyboardInterrupt.
    """
    t_start = time.perf_counter()
    store = store or Store()
    out_dir = Path(out_dir)
    methods, bits, threads = parse_methods(methods), parse_bits(bits), parse_threads(threads)
    size_budgets = parse_size_budgets(size_budgets)
    overrides = {m: {**dict((overrides or {}).get(m) or {}), **entry_settings(m)} for m in methods}
    schemes = _check_grid(methods, bits, first_last_bits, target, budget, overrides, fmt, size_budgets)
    load_options = dict(load_options or {})
    name = _check_inputs(model, data, load_options, limit, store)

    pairs = [(m, b, f) for m in methods for b in bits for f in (None, *size_budgets)]
    settings = CompareSettings(
        methods=tuple(methods), bits=tuple(bits), first_last_bits=first_last_bits,
        target=next(iter(schemes.values())).target if schemes else target, budget=budget, overrides=overrides,
        seed=seed, device=device, format=fmt or ("auto" if size_budgets else "qdq"), threads=tuple(threads),
        limit=limit, latency_runs=latency_runs, parity_images=parity_images, store=str(store.root),
        size_budgets=tuple(size_budgets) or None)
    result = CompareResult(model=str(model), model_name=name, data=str(data), command=command, settings=settings,
                           environment=environment(),
                           rows=tuple(pending_row(name, m, b, first_last_bits, f) for m, b, f in pairs),
                           outputs={"json": str(out_dir / JSON_NAME), "md": str(out_dir / MD_NAME)})
    run_options = dict(load_options=load_options, budget=budget, seed=seed, device=device, fmt=fmt, limit=limit,
                       latency_runs=latency_runs, parity_images=parity_images, store=store, progress=progress)
    for i, (m, b, f) in enumerate(pairs):
        if on_pair_start:
            on_pair_start(i, len(pairs), m, b, f)
        row = _run_pair(result.rows[i], model, data, schemes[b], threads, overrides[m], run_options, out_dir,
                        on_stage)
        result = dataclasses.replace(result, rows=result.rows[:i] + (row,) + result.rows[i + 1:])
        _write_outputs(result, out_dir)
        if on_pair:
            on_pair(row, i, len(pairs))
    result = dataclasses.replace(result, complete=True)
    if plot:
        png = out_dir / PNG_NAME
        warning = write_plot(result.rows, png, model_name=name, first_last_bits=first_last_bits)
        result = dataclasses.replace(result, warnings=result.warnings + (warning,)) if warning else \
            dataclasses.replace(result, plot=str(png), outputs={**result.outputs, "png": str(png)})
    result = dataclasses.replace(result, wall_s=time.perf_counter() - t_start)
    _write_outputs(result, out_dir)
    return result


def _check_grid(methods, bits, first_last_bits, target, budget, overrides, fmt, size_budgets=()) -> dict:
    """``{bits: QuantScheme}`` of the grid, after checking the budget, the format and every
    method's recipe and settings, mixed-precision ones included (before hours of work start).
    Raises ConfigError."""
    from ..methods.recipes import BUDGETS
    from ..methods.sensitivity import mixed_precision_config, split_overrides
    from ..pipeline import EXPORT_FORMATS, method_config, method_overrides
    from ..quant.scheme import QuantScheme
    if budget not in BUDGETS:
        raise ConfigError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    schemes = {b: QuantScheme.from_bits(b, first_last_bits=first_last_bits, target=target) for b in bits}
    for m in methods:
        own, every = method_overrides(overrides[m], size_budgets[0] if size_budgets else None)
        cfg = method_config(method_of(m), budget, None, own)[1]
        if size_budgets:
            mixed_precision_config(cfg, budget, split_overrides(every)[1])
    return schemes


def _check_inputs(model, data, load_options: dict, limit, store: Store) -> str:
    """Load the model (stage 1) and open the data once; returns the model's name for the rows.

    Raises:
        ConfigError: not a classifier (compare ranks by top-1); the load and data errors.
    """
    from ..data import open_eval_set
    from ..pipeline import load_stage
    fp = load_stage(model, store=store, **load_options)
    if fp.meta.task != "classification":
        raise ConfigError(f"compare ranks pairs by top-1 accuracy; this is a {fp.meta.task} model",
                          "verify it with `zqtool run` / `zqtool verify` (pixel agreement and mIoU)")
    open_eval_set(data, limit=limit, task=fp.meta.task)
    return fp.meta.arch or Path(model).stem


def _run_pair(pending: CompareRow, model, data, scheme, threads: Sequence[int], overrides: dict,
              run_options: dict, out_dir: Path, on_stage) -> CompareRow:
    """The ``pending`` pair verified at every thread count (each report written to ``reports/``), as
    its row; an exception becomes a ``failed`` row (with ``ZQTOOL_DEBUG=1`` a non-ZqError propagates)."""
    method = method_of(pending.method)
    from ..pipeline import run
    name = f"{pending.method}-{scheme.tag}" + ("" if pending.size_budget is None else f"-mp{pending.size_budget:g}")
    if pending.size_budget is None:  # the mp. settings are for the mixed-precision rows only
        overrides = {k: v for k, v in overrides.items() if not k.startswith("mp.")}
    t0 = time.perf_counter()
    try:
        reports = []
        for k, t in enumerate(threads):
            # after the first thread count only verify does work: log just that line
            hook = on_stage if k == 0 or on_stage is None else \
                (lambda n, *a, t=t: on_stage(f"verify {t}t", *a) if n == "verify" else None)
            rep = run(model, data, method=method, scheme=scheme, overrides=overrides, threads=t, on_stage=hook,
                      size_budget=pending.size_budget, **run_options)
            write_json(out_dir / REPORTS_DIR / f"{name}-t{t}.json", rep.to_dict())
            reports.append(rep)
        row = row_from_reports(reports, model=pending.model)
    except Exception as e:
        if not isinstance(e, ZqError) and os.environ.get("ZQTOOL_DEBUG"):
            raise
        msg = e.message if isinstance(e, ZqError) else f"internal error ({type(e).__name__}: " \
            f"{(str(e).strip().splitlines() or [''])[0]})"
        row = dataclasses.replace(pending, status="failed", error=msg, error_type=type(e).__name__)
    return dataclasses.replace(row, pair_wall_s=time.perf_counter() - t0)


def _write_outputs(result: CompareResult, out_dir: Path) -> None:
    write_json(out_dir / JSON_NAME, result.to_dict())
    write_text(out_dir / MD_NAME, compare_markdown(result))
