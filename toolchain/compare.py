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

A pair that raises an exception (a :class:`~toolchain.errors.ZqError` such as a model a
method does not support, or an unexpected error) becomes a ``failed`` row carrying the
message, and the other pairs still run: one broken method must not cost the hours the
others took. ``KeyboardInterrupt`` stops the compare; the files stay as of the last
finished pair. With ``ZQTOOL_DEBUG=1`` unexpected (non-ZqError) exceptions propagate.

Row fields (units): ``fp32_top1``/``top1``/``top1_stderr``/``top1_drop`` (= FP32 − quantized)
and ``agreement_top1`` in percent of the evaluated images; ``quantize_wall_s`` (this run
of the method) and ``quantize_method_s`` (its cost from scratch, cached synthetic sets
included) in seconds; ``latency`` a list of ``{threads, fp32_p50_ms, qdq_p50_ms, ratio}``
(ratio = QDQ p50 / FP32 p50 at the same threads, batch 1); ``bytes_fp32``/``bytes_qdq``
the ONNX file sizes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .artifacts import Store, atomic_path, read_json, write_json, write_text
from .errors import ConfigError, ZqError
from .progress import null_progress

JSON_NAME, MD_NAME, PNG_NAME, REPORTS_DIR = "compare.json", "compare.md", "compare.png", "reports"
PLOT_HINT = "pip install zqtool[plot]"


# --------------------------------------------------------------------------- option parsing
def _items(text: str | Sequence, name: str) -> list[str]:
    raw = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    items = [t.strip() for t in raw if t.strip()]
    if not items:
        raise ConfigError(f"--{name} needs at least one value", f"e.g. --{name} " +
                          {"methods": "minmax,bnstat", "bits": "8,4", "threads": "1,2"}.get(name, "a,b"))
    return list(dict.fromkeys(items))  # de-duplicated, order kept


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"minmax,bnstat"`` → ``["minmax", "bnstat"]``, checked against the method registry.

    Raises:
        ConfigError: an empty list or a name that is not registered (the message lists them all).
    """
    from .methods.registry import list_methods
    methods = _items(text, "methods")
    known = list_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"in --methods", f"available: {', '.join(known)}")
    return methods


def _ints(text: str | Sequence, name: str, lo: int, hi: int | None) -> list[int]:
    out = []
    for t in _items(text, name):
        try:
            v = int(t)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ConfigError(f"--{name} expects comma-separated integers in {rng}, got {t!r}",
                              f"e.g. --{name} " + ("8,6,4,3" if name == "bits" else "1,2"))
        out.append(v)
    return out


def parse_bits(text: str | Sequence) -> list[int]:
    """``"8,6,4,3"`` → ``[8, 6, 4, 3]`` (weights = activations). Raises ConfigError outside 2..8."""
    from .quant.scheme import MAX_BITS, MIN_BITS
    return _ints(text, "bits", MIN_BITS, MAX_BITS)


def parse_threads(text: str | Sequence) -> list[int]:
    """``"1,2"`` → ``[1, 2]``: onnxruntime intra-op thread counts to verify at (0 = onnxruntime's
    default, all cores, as for ``verify``). Raises ConfigError."""
    return _ints(text, "threads", 0, None)


def split_overrides(items: Iterable[str] | None, methods: Sequence[str]) -> dict[str, dict]:
    """Route ``--set`` items to methods: ``METHOD.key=value`` sets ``key`` of that method only;
    ``key=value`` sets it on every listed method whose config has ``key``. A method-specific
    value wins over a plain one. Items for a registered method not in ``methods`` are ignored
    (so a script may keep them while its method list is overridden).

    Returns:
        ``{method: {key: value-string}}`` for every method in ``methods``.

    Raises:
        ConfigError: not ``key=value``; an unregistered METHOD prefix; a plain key that no listed
        method has.
    """
    from .methods.recipes import parse_overrides
    from .methods.registry import get_method, list_methods
    per: dict[str, dict] = {m: {} for m in methods}
    plain, specific = {}, []
    for k, v in parse_overrides(list(items or [])).items():
        if "." in k:
            specific.append((k, v))
        else:
            plain[k] = v
    for k, v in plain.items():
        takers = [m for m in methods if k in {f.name for f in dataclasses.fields(get_method(m).Config)}]
        if not takers:
            raise ConfigError(f"--set {k}={v}: none of {', '.join(methods)} has a setting {k!r}",
                              "use --set METHOD.key=value for one method; `zqtool list methods` names them")
        for m in takers:
            per[m][k] = v
    for k, v in specific:
        m, key = k.split(".", 1)
        if m not in list_methods():
            raise ConfigError(f"--set {k}={v}: {m!r} is not a method",
                              f"use --set METHOD.key=value with one of: {', '.join(list_methods())}")
        if m in per:
            per[m][key] = v
    return per


# --------------------------------------------------------------------------- rows
def _scheme_tag(wbits: int, abits: int, fl: int) -> str:
    return f"W{wbits}A{abits} ({fl})"


def row_from_reports(reports: Sequence[dict], model: str | None = None) -> dict:
    """One results row from the run reports of one pair (one report per thread count).

    Args:
        reports: dicts as :func:`toolchain.pipeline.run` returns (``zqtool run --json``); the
            accuracy, sizes and parity are taken from the first, latency from each.
        model: the row's model name (default: the report's architecture).

    Returns:
        The row dict described in the module docstring, ``status`` ``"ok"``.
    """
    r = reports[0]
    q = r.get("quantize") or {}
    s = q.get("scheme") or {}
    fp, qt = (r.get("fp32") or {}).get("top1"), r["quantized"]["top1"]
    io = r.get("integer_ops") or {}
    latency = []
    for rep in sorted(reports, key=lambda x: x["latency_ms"]["threads"]):
        lat = rep["latency_ms"]
        f, qq = (lat.get("fp32") or {}).get("p50"), (lat.get("quantized") or {}).get("p50")
        latency.append({"threads": lat["threads"], "fp32_p50_ms": f, "qdq_p50_ms": qq,
                        "ratio": qq / f if f and qq is not None else None, "runs": lat.get("runs")})
    b = r.get("bytes") or {}
    return {
        "model": model or (r.get("meta") or {}).get("arch"), "method": q.get("method"),
        "wbits": s.get("wbits"), "abits": s.get("abits"), "first_last_bits": s.get("first_last_bits"),
        "status": "ok", "error": None, "n_images": r.get("n_images"),
        "fp32_top1": fp, "top1": qt, "top1_stderr": r.get("top1_stderr"),
        "top1_drop": None if fp is None else fp - qt, "agreement_top1": r.get("agreement_top1"),
        "fp32_top5": (r.get("fp32") or {}).get("top5"), "top5": r["quantized"].get("top5"),
        "conv_integer": io.get("conv_integer"), "conv_total": io.get("conv_total"),
        "quantize_wall_s": q.get("wall_s"), "quantize_method_s": q.get("method_s"),
        "budget": q.get("budget"), "device": q.get("device"),
        "latency": latency, "bytes_fp32": b.get("fp32"), "bytes_qdq": b.get("quantized"),
        "parity": r.get("parity"), "ort_version": r.get("ort_version"), "artifacts": r.get("artifacts"),
    }


def _empty_row(model: str, method: str, bits: int, fl: int, status: str, error: str | None = None) -> dict:
    return {"model": model, "method": method, "wbits": bits, "abits": bits, "first_last_bits": fl,
            "status": status, "error": error}


# --------------------------------------------------------------------------- markdown
def _f(v, fmt: str = ".2f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def markdown_table(rows: Sequence[dict]) -> str:
    """The README results table (markdown) of ``rows`` (ok, failed and pending alike), in order.

    Columns: model, method, W/A (first/last), FP32 top-1, QDQ top-1 ± 1 s.e., Δ top-1 (QDQ −
    FP32), agree %, integer convs, quantize s (from scratch), one ``p50 ms FP32 → QDQ (ratio)``
    column per thread count found in the rows, MB FP32 → QDQ, parity (ORT opt off / on).
    """
    threads = sorted({lat["threads"] for r in rows for lat in r.get("latency") or []})
    head = ["model", "method", "W/A (first/last)", "FP32 top-1", "QDQ top-1", "Δ top-1", "agree %",
            "integer convs", "quantize s"] + [f"p50 ms FP32 → QDQ ({t} thr)" for t in threads] + \
           ["MB FP32 → QDQ", "parity (opt off / on)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lead = [str(r.get("model")), str(r.get("method")),
                _scheme_tag(r.get("wbits"), r.get("abits"), r.get("first_last_bits"))]
        if r.get("status") != "ok":
            what = r.get("status", "?") + (f": {r['error']}" if r.get("error") else "")
            cells = lead + [_f(r.get("fp32_top1")), what.replace("|", "\\|").replace("\n", " ")] + \
                ["–"] * (len(head) - len(lead) - 2)
        else:
            fp, qt = r.get("fp32_top1"), r["top1"]
            lat = {x["threads"]: x for x in r.get("latency") or []}
            par = r.get("parity") or {}
            par_s = " / ".join(f"{par[k]['agreement_top1']:.1f}%, {par[k].get('max_diff_lsb', float('nan')):.0f} LSB"
                               for k in ("off", "on") if par.get(k)) or "–"
            lat_s = [f"{_f(lat[t]['fp32_p50_ms'])} → {_f(lat[t]['qdq_p50_ms'])} ({_f(lat[t]['ratio'])}×)"
                     if t in lat else "–" for t in threads]
            mb = (f"{r['bytes_fp32'] / 1e6:.2f}" if r.get("bytes_fp32") else "–") + " → " + \
                 (f"{r['bytes_qdq'] / 1e6:.2f}" if r.get("bytes_qdq") else "–")
            cells = lead + [_f(fp), f"{qt:.2f} ± {_f(r.get('top1_stderr'))}",
                            "–" if fp is None else f"{qt - fp:+.2f}", _f(r.get("agreement_top1")),
                            f"{r.get('conv_integer')}/{r.get('conv_total')}",
                            f"{r.get('quantize_method_s') or 0:.0f}"] + lat_s + [mb, par_s]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_footer(rows: Sequence[dict]) -> str:
    """One line under the table: images per model, onnxruntime version, what the columns mean."""
    n = {}
    for r in rows:
        if r.get("n_images"):
            n.setdefault(r["model"], r["n_images"])
    ort = next((r["ort_version"] for r in rows if r.get("ort_version")), "?")
    runs = next((x.get("runs") for r in rows for x in r.get("latency") or [] if x.get("runs")), "?")
    imgs = "; ".join(f"{m}: {k} images" for m, k in n.items()) or "no finished pair"
    return (f"{imgs}; onnxruntime {ort}. ± is one standard error of the QDQ top-1; Δ = QDQ − FP32 on "
            f"the same images; latency is the p50 of {runs} batch-1 runs, (ratio) = QDQ / FP32 at the same "
            "threads; quantize s is the method's cost from scratch (cached synthetic sets included).\n")


def compare_markdown(result: dict) -> str:
    """``compare.md``: title, the command, the table, its footer, settings and environment."""
    s, env = result["settings"], result.get("environment") or {}
    done = sum(r["status"] != "pending" for r in result["rows"])
    failed = [r for r in result["rows"] if r["status"] == "failed"]
    limit = f" (first {s['limit']} images)" if s.get("limit") else ""
    overrides = "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                          for m, o in (s.get("overrides") or {}).items() if o)
    state = "complete" if result.get("complete") else f"in progress: {done} of {len(result['rows'])} pairs done"
    lines = [f"# zqtool compare: {result['model_name']}", ""]
    if result.get("command"):
        lines += ["```", result["command"], "```", ""]
    lines += [markdown_table(result["rows"]), markdown_footer(result["rows"]),
              f"Status: {state}" + (f", {len(failed)} failed" if failed else "") +
              (f"; this invocation took {result['wall_s']:.0f} s" if result.get("wall_s") is not None else "") + ".",
              "",
              f"Settings: model `{result['model']}`, data `{result['data']}`{limit}, budget {s['budget']}, "
              f"seed {s['seed']}, "
              f"first/last layer {s['first_last_bits']}-bit, format {s['format']}, "
              f"{s['latency_runs']} latency runs, parity on {s['parity_images']} images"
              + (f", settings {overrides}" if overrides else "") + ".",
              "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", ""]
    if result.get("plot"):
        lines += [f"![top-1 against bits]({Path(result['plot']).name})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot
def write_plot(result: dict, path: str | Path) -> str | None:
    """Write the PNG of top-1 (± 1 s.e.) against bits, one line per method, FP32 as a dashed line.

    matplotlib is imported here (Agg canvas, no global backend change). Returns None when the
    file was written, else a one-line warning (matplotlib missing, or no finished pair).
    """
    ok = [r for r in result["rows"] if r["status"] == "ok"]
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
    for method in dict.fromkeys(r["method"] for r in ok):
        pts = sorted((r["wbits"], r["top1"], r.get("top1_stderr") or 0.0) for r in ok if r["method"] == method)
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    fps = [r["fp32_top1"] for r in ok if r.get("fp32_top1") is not None]
    if fps:
        fp = sum(fps) / len(fps)
        ax.axhline(fp, color="black", linestyle="--", linewidth=1, label=f"FP32 ({fp:.2f}%)")
    bits = sorted({r["wbits"] for r in result["rows"]})
    ax.set_xticks(bits)
    ax.set_xlabel(f"bits (weights = activations; first/last layer {result['settings']['first_last_bits']}-bit)")
    ax.set_ylabel("top-1 % (± 1 s.e.)")
    n = ok[0].get("n_images")
    ax.set_title(f"{result['model_name']}: QDQ top-1 on onnxruntime, {n} images", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return None


# --------------------------------------------------------------------------- environment
def environment() -> dict:
    """Versions and machine: python, torch, onnxruntime, onnx, zqtool, platform, CPU model, cores."""
    from importlib import metadata

    from . import __version__
    env = {"python": platform.python_version()}
    for pkg in ("torch", "onnxruntime", "onnx"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    env["zqtool"] = __version__
    env["platform"] = platform.platform()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env["cpu"] = cpu
    env["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return env


# --------------------------------------------------------------------------- the compare
def compare(model: str | Path, data: str | Path, *, methods: Sequence[str], bits: Sequence[int],
            out_dir: str | Path, load_options: dict | None = None, first_last_bits: int = 8,
            target: str | None = None, budget: str = "cpu", overrides: dict[str, dict] | None = None, seed: int = 0,
            device: str = "auto", fmt: str = "qdq", threads: Sequence[int] = (1,), limit: int | None = None,
            latency_runs: int = 50, parity_images: int = 256, store: Store | None = None,
            command: str | None = None, plot: bool = True, progress=null_progress, on_stage=None,
            on_pair_start: Callable | None = None, on_pair: Callable | None = None) -> dict:
    """Run every (method, bits) pair through load → quantize → export → verify and write the tables.

    Pairs run method by method (so a method's bit-independent cache, e.g. bnstat's synthetic
    set, is built once), each verified at every thread count in ``threads``.

    Args:
        model, data: as for :func:`toolchain.pipeline.run` (a model file; an .npz or image folder).
        methods: registered method names (see :func:`parse_methods`).
        bits: bit widths; each pair is W=A=bits with first/last layers at ``first_last_bits``.
        target: deployment target of every pair's scheme (:mod:`toolchain.targets`; None = portable).
        out_dir: where compare.json / compare.md / compare.png / reports/ go (created).
        overrides: ``{method: {key: value}}`` method settings (see :func:`split_overrides`).
        threads: onnxruntime intra-op thread counts (accuracy is measured at each; the row takes
            the first's accuracy and every latency).
        command: the command line, recorded in compare.json/md.
        plot: write compare.png.
        on_pair_start(index, total, method, bits) / on_pair(row, index, total): called before and
            after each pair (0-based index); ``on_stage`` and ``progress`` go to pipeline.run.

    Returns:
        The dict written to compare.json: ``model``, ``model_name``, ``data``, ``settings``,
        ``environment``, ``rows`` (module docstring), ``complete``, ``wall_s`` (seconds of this
        invocation), ``outputs`` (paths), ``plot`` (PNG path or None), ``warnings`` (strings).

    Raises:
        ConfigError (bad method/bits/settings/budget/format; raised before any pair runs),
        InputFileError/ModelMismatchError/UnsafeModelError/UnsupportedModelError (the model
        cannot be loaded), DataError (the data cannot be opened), KeyboardInterrupt.
    """
    from .data import open_eval_set
    from .methods.recipes import BUDGETS
    from .pipeline import EXPORT_FORMATS, load_stage, method_config, run
    from .quant.scheme import QuantScheme

    t_start = time.perf_counter()
    store = store or Store()
    out_dir = Path(out_dir)
    methods, bits, threads = parse_methods(methods), parse_bits(bits), parse_threads(threads)
    overrides = {m: dict((overrides or {}).get(m) or {}) for m in methods}
    if budget not in BUDGETS:
        raise ConfigError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    schemes = {b: QuantScheme.from_bits(b, first_last_bits=first_last_bits, target=target) for b in bits}
    for m in methods:  # every recipe and setting is checked before hours of work start
        method_config(m, budget, None, overrides[m])
    load_options = dict(load_options or {})
    fp = load_stage(model, store=store, **load_options)
    if fp.meta.task != "classification":
        raise ConfigError(f"compare ranks pairs by top-1 accuracy; this is a {fp.meta.task} model",
                          "verify it with `zqtool run` / `zqtool verify` (pixel agreement and mIoU)")
    open_eval_set(data, limit=limit, task=fp.meta.task)
    name = fp.meta.arch or Path(model).stem

    pairs = [(m, b) for m in methods for b in bits]
    rows = [_empty_row(name, m, b, first_last_bits, "pending") for m, b in pairs]
    result = {
        "model": str(model), "model_name": name, "data": str(data), "command": command,
        "settings": {"methods": methods, "bits": bits, "first_last_bits": first_last_bits,
                     "target": next(iter(schemes.values())).target if schemes else target, "budget": budget,
                     "overrides": overrides, "seed": seed, "device": device, "format": fmt, "threads": threads,
                     "limit": limit, "latency_runs": latency_runs, "parity_images": parity_images,
                     "store": str(store.root)},
        "environment": environment(), "rows": rows, "complete": False, "wall_s": None, "plot": None,
        "outputs": {"json": str(out_dir / JSON_NAME), "md": str(out_dir / MD_NAME)}, "warnings": [],
    }
    for i, (m, b) in enumerate(pairs):
        if on_pair_start:
            on_pair_start(i, len(pairs), m, b)
        t0 = time.perf_counter()
        try:
            reports = []
            for k, t in enumerate(threads):
                # after the first thread count only verify does work: log just that line
                hook = on_stage if k == 0 or on_stage is None else \
                    (lambda n, *a, t=t: on_stage(f"verify {t}t", *a) if n == "verify" else None)
                rep = run(model, data, load_options=load_options, method=m, scheme=schemes[b], budget=budget,
                          overrides=overrides[m], seed=seed, device=device, fmt=fmt, threads=t, limit=limit,
                          latency_runs=latency_runs, parity_images=parity_images, store=store,
                          progress=progress, on_stage=hook)
                write_json(out_dir / REPORTS_DIR / f"{m}-{schemes[b].tag}-t{t}.json", rep)
                reports.append(rep)
            row = row_from_reports(reports, model=name)
        except Exception as e:
            if not isinstance(e, ZqError) and os.environ.get("ZQTOOL_DEBUG"):
                raise
            msg = e.message if isinstance(e, ZqError) else f"internal error ({type(e).__name__}: " \
                f"{(str(e).strip().splitlines() or [''])[0]})"
            row = _empty_row(name, m, b, first_last_bits, "failed", msg)
            row["error_type"] = type(e).__name__
        row["pair_wall_s"] = time.perf_counter() - t0
        rows[i] = row
        _write_outputs(result, out_dir)
        if on_pair:
            on_pair(row, i, len(pairs))
    result["complete"] = True
    if plot:
        png = out_dir / PNG_NAME
        warning = write_plot(result, png)
        if warning:
            result["warnings"].append(warning)
        else:
            result["plot"] = result["outputs"]["png"] = str(png)
    result["wall_s"] = time.perf_counter() - t_start
    _write_outputs(result, out_dir)
    return result


def _write_outputs(result: dict, out_dir: Path) -> None:
    write_json(out_dir / JSON_NAME, result)
    write_text(out_dir / MD_NAME, compare_markdown(result))


def load_rows(paths: Iterable[str | Path]) -> list[dict]:
    """Rows from ``compare.json`` files (in their order) and ``zqtool run --json`` reports
    (grouped per model/method/scheme, one row per group with latency at each thread count,
    sorted by model, method, bits descending)."""
    rows, groups = [], {}
    for p in paths:
        d = read_json(p)
        if isinstance(d, dict) and "rows" in d:
            rows += d["rows"]
            continue
        q, s = d["quantize"], d["quantize"]["scheme"]
        key = ((d.get("meta") or {}).get("arch") or Path(p).stem, q["method"], s["wbits"], s["abits"],
               s["first_last_bits"])
        groups.setdefault(key, {})[d["latency_ms"]["threads"]] = d
    for key in sorted(groups, key=lambda k: (k[0], k[1], -k[2])):
        rows.append(row_from_reports(list(groups[key].values()), model=key[0]))
    return rows


def render_rows(rows: Sequence[dict]):
    """A rich Table of ``rows`` for the terminal: the markdown's numbers in fewer, narrower
    columns (QDQ latency with its ratio to FP32; QDQ file size)."""
    from rich import box
    from rich.table import Table
    threads = sorted({lat["threads"] for r in rows for lat in r.get("latency") or []})
    table = Table(title=f"zqtool compare — {rows[0]['model'] if rows else ''}", box=box.SIMPLE_HEAD,
                  padding=(0, 1), collapse_padding=True, pad_edge=False, caption="drop = FP32 − QDQ top-1 (points); p50: QDQ batch-1 latency (ratio to FP32, same threads)")
    cols = ["method", "W/A", "FP32\ntop-1", "QDQ top-1\n± s.e.", "drop", "agree\n%", "quant.\ns"] + \
        [f"p50 ms\n{t} thr" for t in threads] + ["QDQ\nMB"]
    for i, c in enumerate(cols):
        table.add_column(c, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for r in rows:
        lead = [str(r["method"]), f"W{r['wbits']}A{r['abits']}"]
        if r["status"] != "ok":
            style = "red" if r["status"] == "failed" else "dim"
            table.add_row(*lead, _f(r.get("fp32_top1")), f"[{style}]{r['status']}[/]", *[""] * (len(cols) - 4))
            continue
        lat = {x["threads"]: x for x in r["latency"]}
        table.add_row(*lead, _f(r["fp32_top1"]), f"{r['top1']:.2f} ± {_f(r['top1_stderr'])}",
                      _f(r["top1_drop"]), _f(r["agreement_top1"], ".1f"), f"{r.get('quantize_method_s') or 0:.0f}",
                      *[f"{_f(lat[t]['qdq_p50_ms'], '.3f')} ×{_f(lat[t]['ratio'])}" if t in lat else "–"
                        for t in threads],
                      _f(r["bytes_qdq"] / 1e6 if r.get("bytes_qdq") else None))
    return table
