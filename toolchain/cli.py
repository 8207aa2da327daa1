"""``zqtool``: the command line. Thin commands that parse arguments, draw progress and call
the stage functions of :mod:`toolchain.pipeline`; every user error is one clear message
and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
import sys
from pathlib import Path
from typing import List, Optional

import enum

import typer
from rich.console import Console
from rich.markup import escape

from .core.errors import ConfigError, InputFileError, ZqError
from .quant.protocol import DEFAULT_PROTOCOL, PROTOCOLS
from .targets import DEFAULT_TARGET, TARGETS

app = typer.Typer(
    # plain click-style help: flags show as `--trust-pickle`, not `--trust-pickle <bool>`
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Zero-shot low-bit quantization of PyTorch CNNs to fully integer QDQ ONNX, verified on onnxruntime.\n\n"
         "Stages: load → quantize → export → verify (or `run` for all four). Artifacts are cached under --out "
         "by content, so a re-run only redoes what changed.")
# torch.export's pytree specs warn on deepcopy (torch 2.13); nothing a user can act on
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
#: when output goes to a file or a pipe, rich would wrap tables at 80 columns: use a width that fits them
PIPED_WIDTH = 200


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


console = _console(stderr=True)
out_console = _console(stderr=False)


def handle_errors(fn):
    """Turn ZqError into 'error: …' + hint on stderr and exit 2; Ctrl-C into exit 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ZqError as e:
            # escape: messages carry [key listings] that rich would take for markup and drop
            console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
            if e.hint:
                console.print(f"  [dim]hint:[/] {escape(e.hint)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/] — no partial artifact was kept; re-run to continue")
            raise typer.Exit(130)
        except typer.Exit:
            raise
        except Exception as e:  # a bug, not a user error: still one clear line unless debugging
            if os.environ.get("ZQTOOL_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            console.print(f"[bold red]error:[/] internal error ({type(e).__name__}: {first})",
                          highlight=False, soft_wrap=True)
            console.print("  [dim]hint:[/] no partial artifact was kept; re-run with ZQTOOL_DEBUG=1 for the "
                          "traceback and report it", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
    return wrapper


# ----------------------------------------------------------------------------- option parsing
def _floats(text: str | None, name: str):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"--{name} expects comma-separated numbers, got {text!r}",
                          f"e.g. --{name} 0.485,0.456,0.406") from None


def _shape(text: str | None):
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v)
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise ConfigError(f"--input-shape expects C,H,W, got {text!r}", "e.g. --input-shape 3,32,32")
    return shape


ModelArg = typer.Argument(..., help="Model file: a torch.export archive (.pt2), a state_dict (.pt/.pth/.th; "
                                     "needs --arch) or a pickled nn.Module (needs --trust-pickle).")
ArchOpt = typer.Option(None, "--arch", help="Zoo architecture of a state_dict (see `zqtool list`).")
ShapeOpt = typer.Option(None, "--input-shape", help="C,H,W of one input (default: the arch's).")
MeanOpt = typer.Option(None, "--mean", help="Per-channel mean of the input normalization, on [0,1] pixels.")
StdOpt = typer.Option(None, "--std", help="Per-channel std of the input normalization.")
ClassesOpt = typer.Option(None, "--num-classes", help="Number of classes (default: from the checkpoint).")
PickleOpt = typer.Option(False, "--trust-pickle", help="Allow loading a pickled nn.Module (runs code from the file).")
OutOpt = typer.Option(Path("runs"), "--out", help="Root directory of the cached artifacts.")
def _method_names() -> list[str]:
    """The registered methods, read from the recipes shipped with them (light: importing the
    methods themselves would load torch before --help could print)."""
    from importlib import resources
    return sorted(r.name[:-5] for r in resources.files("toolchain.recipes").iterdir() if r.name.endswith(".toml"))


MethodChoice = enum.Enum("MethodChoice", {m: m for m in _method_names()}, type=str)
MethodOpt = typer.Option("bnstat", "--method", "-m", help="Zero-shot method (see `zqtool list`).")
BitsOpt = typer.Option(8, "--bits", "-b", help="Weight and activation bit width (2..8).")
WbitsOpt = typer.Option(None, "--wbits", help="Weight bit width (overrides --bits).")
AbitsOpt = typer.Option(None, "--abits", help="Activation bit width (overrides --bits).")
FLOpt = typer.Option(8, "--first-last-bits", help="Bit width of the first and last layers (weights and input activations, the network input included).")
ResidualOpt = typer.Option(None, "--residual-bits", help="Bit width of activations no Conv/Linear reads (a residual "
                           "branch's output before its Add); default: the activation width. 8 costs nothing on "
                           "onnxruntime; every layer still reads --abits codes.")
#: the registered targets as a typer choice (``--help`` lists them; a bad value is a one-line error)
TargetChoice = enum.Enum("TargetChoice", {n: n for n in TARGETS}, type=str)
StrictOpt = typer.Option(False, "--strict", help="Refuse a model holding ops zqtool has no quantized form "
                         "for, instead of running them in float between DequantizeLinear and QuantizeLinear.")
SchemeChoice = enum.Enum("SchemeChoice", {n: n for n in PROTOCOLS}, type=str)
SchemeOpt = typer.Option(
    DEFAULT_PROTOCOL, "--scheme",
    help="Quantization protocol: " + "; ".join(f"{p.name} = {p.description}" for p in PROTOCOLS.values())
    + ". paper runs are for comparison with published tables: run reports the torch simulation, export refuses them.")
TargetOpt = typer.Option(
    DEFAULT_TARGET, "--target",
    help="Deployment target: " + "; ".join(f"{t.name} = {t.description}" for t in TARGETS.values()) + ".")
#: fixed choices, listed by --help (the same tuples the stages validate; tests/test_cli.py checks they match)
BudgetChoice = enum.Enum("BudgetChoice", {b: b for b in ("cpu", "paper")}, type=str)
DeviceChoice = enum.Enum("DeviceChoice", {d: d for d in ("auto", "cpu", "cuda")}, type=str)
FormatChoice = enum.Enum("FormatChoice", {f: f for f in ("qdq", "int4")}, type=str)


def _v(choice):
    """The plain string of a choice (an Enum member from typer, or a str from Python callers)."""
    return getattr(choice, "value", choice)


BudgetOpt = typer.Option("cpu", "--budget", help="Recipe budget: cpu (minutes on 2 cores) or paper (published schedule).")
RecipeOpt = typer.Option(None, "--recipe", help="A TOML recipe file instead of recipes/<method>.toml.")
SetOpt = typer.Option(None, "--set", help="Override a method setting: --set iterations=50 (repeatable).")
SeedOpt = typer.Option(0, "--seed", help="Random seed (same seed → same quantized weights).")
DeviceOpt = typer.Option("auto", "--device", help="Where the method runs.")
FormatOpt = typer.Option("qdq", "--format", help="qdq (8-bit containers, integer kernels) or int4 (opset-21 INT4/UINT4).")
DataOpt = typer.Option(..., "--data", help="Labelled eval data: .npz (images uint8 NHWC, labels) or a folder with labels.csv; "
                       "for a segmentation model an .npz of images, optionally with masks (uint8 N×H×W, 255 = ignore).")
ThreadsOpt = typer.Option(1, "--threads", min=0, help="onnxruntime intra-op threads for accuracy and latency "
                                                       "(0 = onnxruntime's default: all cores).")
JsonOpt = typer.Option(None, "--json", help="Write the report as JSON here.")
SizeBudgetOpt = typer.Option(
    None, "--size-budget", help="Mixed precision: a weight width per layer (8, 6, 4 by layer sensitivity on the "
    "synthetic set) so that the model's bytes are at most F × the all-8-bit model's, 0 < F <= 1. Bytes of the "
    "int4 file (<= 4-bit weights two a byte), which a run then exports; settings: --set mp.KEY=VALUE "
    "(docs/mixed_precision.md). Activations keep --abits.")
RunFormatOpt = typer.Option(None, "--format", help="qdq (8-bit containers, integer kernels) or int4 (opset-21 "
                            "INT4/UINT4); default qdq, or int4 with --size-budget (the file whose bytes it counts).")
TimeBudgetOpt = typer.Option(
    None, "--time-budget", help="Fit the method's long work (synthesis, fine-tuning, reconstruction) into this long, "
    "e.g. 15m, 1h, 90s: one timed FP pass estimates each phase and the settings that scale it are lowered to fit; "
    "the plan prints before the work and goes into the run log. Default: the recipe's (cpu budget: minutes per "
    "method, `zqtool list methods`); none = the recipe's settings as they are. Same as --set time_budget=….")
LimitOpt = typer.Option(None, "--limit", help="Evaluate only the first N images.")
RunsOpt = typer.Option(50, "--latency-runs", help="Timed batch-1 runs per model.")


def _load_options(arch, input_shape, mean, std, num_classes, trust_pickle) -> dict:
    return {"arch": arch, "input_shape": _shape(input_shape), "mean": _floats(mean, "mean"),
            "std": _floats(std, "std"), "num_classes": num_classes, "trust_pickle": trust_pickle}


def _with_time_budget(set_: list[str] | None, time_budget: str | None) -> list[str]:
    """``--set`` items with ``--time-budget`` as one more (``time_budget=…``, checked before any work)."""
    if time_budget is None:
        return list(set_ or [])
    from .methods.schedule import parse_duration
    parse_duration(time_budget)  # a bad value is a one-line error now, not after the load
    return [*(set_ or []), f"time_budget={time_budget}"]


def _quant_options(method, bits, wbits, abits, first_last_bits, budget, recipe, set_, seed, device,
                   target=DEFAULT_TARGET, strict: bool = False, scheme: str | None = None,
                   residual_bits: int | None = None) -> dict:
    from .methods.config import parse_overrides
    from .methods.recipes import BUDGETS
    from .quant.scheme import QuantScheme
    if budget not in BUDGETS and recipe is None:
        raise ConfigError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    target, budget, device, method = _v(target), _v(budget), _v(device), _v(method)
    return {"method": method, "scheme": QuantScheme.from_bits(bits, wbits, abits, first_last_bits, target, _v(scheme),
                                                                 residual_bits),
            "budget": budget, "recipe": recipe, "overrides": parse_overrides(set_), "seed": seed,
            "device": device, "strict": strict}


def _progress():
    from .progress import rich_progress
    return rich_progress(console)


def _write_json(path: Path | None, obj) -> None:
    if path is not None:
        from .artifacts import write_json
        write_json(path, obj)
        console.print(f"wrote {path}")


def read_json_quiet(path: Path) -> dict:
    from .artifacts import read_json
    return read_json(path) if path.is_file() else {}


def _float_ops_note(qlog: dict) -> None:
    """One line naming the ops that run in float (and a warning for ops zqtool does not know)."""
    from .graph.ops import format_counts
    if qlog.get("float_ops"):
        console.print(f"in float between DequantizeLinear and QuantizeLinear: {format_counts(qlog['float_ops'])}",
                      highlight=False, soft_wrap=True, markup=False)
    if qlog.get("unknown_ops"):
        console.print(f"[yellow]warning:[/] ops with no quantized form ran in float: "
                      f"{escape(format_counts(qlog['unknown_ops']))} (--strict refuses them)", highlight=False)


# ----------------------------------------------------------------------------- commands
@app.command(epilog="Example: zqtool load ../shared/models/resnet20-12fca82f.th --arch resnet20")
@handle_errors
def load(model: Path = ModelArg, arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt,
         mean: Optional[str] = MeanOpt, std: Optional[str] = StdOpt, num_classes: Optional[int] = ClassesOpt,
         trust_pickle: bool = PickleOpt, out: Path = OutOpt):
    """Stage 1: read a model file into the canonical FP artifact (model.pt2 + model.json)."""
    from .artifacts import Store
    from .pipeline import load_stage
    fp = load_stage(model, store=Store(out), **_load_options(arch, input_shape, mean, std, num_classes, trust_pickle))
    m = fp.meta
    console.print(f"loaded {model} ({m.source_format}, arch={m.arch}) input {m.input_shape} "
                  f"classes {m.num_classes}")
    typer.echo(str(fp.dir))


@app.command(epilog="Example: zqtool quantize ../shared/models/resnet20-12fca82f.th --arch resnet20 --method gznq --bits 4")
@handle_errors
def quantize(model: Path = ModelArg, method: MethodChoice = MethodOpt, bits: int = BitsOpt, wbits: Optional[int] = WbitsOpt,
             abits: Optional[int] = AbitsOpt, first_last_bits: int = FLOpt, target: TargetChoice = TargetOpt,
             residual_bits: Optional[int] = ResidualOpt, scheme: SchemeChoice = SchemeOpt, budget: BudgetChoice = BudgetOpt,
             recipe: Optional[Path] = RecipeOpt, set_: Optional[List[str]] = SetOpt, seed: int = SeedOpt,
             device: DeviceChoice = DeviceOpt, arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt,
             mean: Optional[str] = MeanOpt, std: Optional[str] = StdOpt, num_classes: Optional[int] = ClassesOpt,
             trust_pickle: bool = PickleOpt, strict: bool = StrictOpt,
             size_budget: Optional[float] = SizeBudgetOpt, time_budget: Optional[str] = TimeBudgetOpt,
             out: Path = OutOpt):
    """Stage 2: zero-shot quantization (runs stage 1 if needed). Prints the run directory."""
    from .artifacts import Store
    from .pipeline import export_format, load_stage, method_overrides, mixed_precision_stage, quantize_stage
    store = Store(out)
    opts = _quant_options(method, bits, wbits, abits, first_last_bits, budget, recipe,
                          _with_time_budget(set_, time_budget), seed, device, target, strict, scheme, residual_bits)
    opts["overrides"], mp_overrides = method_overrides(opts["overrides"], size_budget)
    if size_budget is not None:
        from .quant.allocate import check_size_budget
        check_size_budget(size_budget)  # before any work
    mp = None
    with _progress() as progress:
        fp = load_stage(model, store=store, **_load_options(arch, input_shape, mean, std, num_classes, trust_pickle))
        if size_budget is not None:
            mp = mixed_precision_stage(fp, size_budget=size_budget, store=store, progress=progress,
                                       overrides=mp_overrides,
                                       **{k: opts[k] for k in ("scheme", "method", "budget", "recipe", "seed", "device")})
            opts["scheme"] = mp.scheme
        q = quantize_stage(fp, store=store, progress=progress, **opts)
    rec = (q.config_json().get("recipe") or {})
    if q.scheme.rules.exportable:  # a simulation-only scheme has no DequantizeLinear/QuantizeLinear to speak of
        _float_ops_note(read_json_quiet(q.dir / "quant.json"))
    if mp is not None:
        _print_mixed_precision(mp.plan)
    fmt = export_format(None, mp)
    rules = q.scheme.rules
    next_step = (f"export with: zqtool export {q.dir}" + (f" --format {fmt}" if fmt != "qdq" else "")
                 if rules.exportable else f"simulation only, not exportable ({rules.why_simulated}); "
                                          f"`zqtool run … --scheme {rules.name}` reports its accuracy")
    console.print(f"quantized with {q.method} ({q.scheme.tag}, target {q.scheme.target}; recipe "
                  f"{rec.get('file', '?')} [{rec.get('budget', '?')}]); {next_step}",
                  highlight=False, soft_wrap=True, markup=False)
    typer.echo(str(q.dir))


def _print_mixed_precision(plan) -> None:
    """The widths a ``--size-budget`` chose (a :class:`~toolchain.reports.MixedPrecisionPlan`): one row per
    layer with its sensitivity at each candidate, then the bytes against the budget."""
    from rich import box
    from rich.table import Table
    cands = list(plan.candidates)
    table = Table(title=f"mixed precision: {plan.label}", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  caption=f"sensitivity: {plan.metric} of the output with that layer alone quantized, mean over "
                          f"{plan.images} synthetic images" + (f"; {','.join(map(str, plan.skipped))} not measured "
                                                               f"(saves no byte in the {plan.file_format} file)"
                                                               if plan.skipped else ""))
    for c in ["layer", "role", "weights"] + [f"Ω({b})" for b in cands] + ["bits"]:
        table.add_column(c, justify="left" if c in ("layer", "role") else "right")
    for l in plan.layers:
        errs = [f"{e:.3g}" for e in l.errors] if l.errors else ["–"] * len(cands)
        bits = f"{l.bits}" + (f" ({l.effective_bits})" if l.effective_bits != l.bits else "") + \
            ("" if l.allocated else " fixed")
        table.add_row(l.name, l.role or "", f"{l.weights:,}", *errs, bits)
    console.print(table)
    what = (f"the {plan.file_format} file's bytes" if plan.exported
            else f"{plan.size_model} bytes (b/8 a weight code; the {plan.file_format} file keeps 8-bit containers)")
    console.print(f"mixed precision: {plan.estimated_bytes:,.0f} of {plan.reference_bytes:,.0f} bytes "
                  f"({plan.ratio:.3f} ≤ budget {plan.size_budget:.3f}), counted as {what}; "
                  f"avg {plan.avg_wbits:.2f} weight bits; bits (n): n = codes after the target's rule",
                  highlight=False, soft_wrap=True, markup=False)


@app.command(epilog="Example: zqtool synth ../shared/models/resnet20-12fca82f.th --arch resnet20 --png grid.png")
@handle_errors
def synth(model: Path = ModelArg, method: str = typer.Option("gznq", "--method", "-m", help="A method with a synthetic set (gznq)."),
          budget: BudgetChoice = BudgetOpt, recipe: Optional[Path] = RecipeOpt, set_: Optional[List[str]] = SetOpt,
          seed: int = SeedOpt, device: DeviceChoice = DeviceOpt, arch: Optional[str] = ArchOpt,
          input_shape: Optional[str] = ShapeOpt, mean: Optional[str] = MeanOpt, std: Optional[str] = StdOpt,
          num_classes: Optional[int] = ClassesOpt, trust_pickle: bool = PickleOpt, out: Path = OutOpt,
          png: Optional[Path] = typer.Option(None, "--png", help="Write a PNG grid of the synthetic images (a row per class)."),
          per_class: int = typer.Option(8, "--per-class", help="Images per class in the PNG grid.")):
    """Build (or reuse) a method's synthetic calibration set — the one `quantize` reuses — and
    optionally show it as a per-class PNG grid. Prints the artifact directory."""
    from .artifacts import Store
    from .methods.config import parse_overrides
    from .methods.images import save_grid
    from .methods.recipes import BUDGETS
    from .pipeline import load_stage, synth_stage
    if budget not in BUDGETS and recipe is None:
        raise ConfigError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    store = Store(out)
    with _progress() as progress:
        fp = load_stage(model, store=store, **_load_options(arch, input_shape, mean, std, num_classes, trust_pickle))
        art = synth_stage(fp, method=method, budget=_v(budget), recipe=recipe, overrides=parse_overrides(set_),
                          seed=seed, device=_v(device), store=store, progress=progress)
    console.print(f"{len(art.images)} synthetic images ({method}, {budget} budget) in {art.dir}")
    if png is not None:
        if art.labels is None:
            raise ConfigError(f"method {method!r} has no labels for a per-class grid")
        scale = max(1, 64 // max(art.images.shape[-2:]))
        w, h = save_grid(art.images, art.labels, art.meta.mean, art.meta.std, png,
                         num_classes=art.meta.num_classes, per_class=per_class, scale=scale)
        console.print(f"wrote {png} ({w}x{h} px, a row per class)")
    typer.echo(str(art.dir))


@app.command(epilog="Example: zqtool export runs/q/<key>")
@handle_errors
def export(run_dir: Path = typer.Argument(..., help="A quantize run directory (printed by `zqtool quantize`)."),
           fmt: FormatChoice = FormatOpt,
           out: Optional[Path] = typer.Option(None, "--out", help="Root directory of the cached artifacts "
                                              "(default: the store the run belongs to, RUN/../..)."),
           target: Optional[TargetChoice] = typer.Option(
               None, "--target",
               help="Check that the run was quantized for this target (the target is part of the quantization "
                    "scheme: quantize with --target to change it).")):
    """Stage 3: write model.qdq.onnx and the FP32 reference model.fp32.onnx (onnxsim-simplified)."""
    from .artifacts import Store
    from .pipeline import QArtifact, export_stage
    q = QArtifact.open(run_dir)
    target = None if target is None else target.value
    if target is not None and target != q.scheme.target:
        raise ConfigError(f"{run_dir} was quantized for --target {q.scheme.target}, not {target}",
                          f"re-run `zqtool quantize … --target {target}`: the target sets the integer ranges "
                          "the method calibrates and trains")
    fmt = _v(fmt)
    # a run lives at <store>/q/<key>: its exports go beside it unless --out says otherwise
    art = export_stage(q, fmt=fmt, store=Store(out if out is not None else Path(run_dir).resolve().parent.parent))
    if fmt == "int4":
        console.print("[yellow]note:[/] INT4/UINT4 Q/DQ runs in float on onnxruntime's CPU EP "
                      "(smaller file, slower than FP32); use --format qdq for integer kernels")
    console.print(f"verify with: zqtool verify {art.qdq_path} --data DATA")
    typer.echo(str(art.qdq_path))


@app.command(epilog="Example: zqtool bundle runs/onnx/<key> --out pi-bundle --data test.npz --target arm64 --ort")
@handle_errors
def bundle(source: Path = typer.Argument(..., help="A quantize run, an export directory or a .qdq.onnx file."),
           out: Path = typer.Option(..., "--out", help="New folder to write the bundle into."),
           data: Optional[Path] = typer.Option(None, "--data", help="Eval data to include (.npz or a folder with "
                                               "labels.csv)."),
           target: Optional[TargetChoice] = typer.Option(
               None, "--target", help="The device's CPU family; checked against the target the model was "
                                      "quantized for (portable fits every CPU)."),
           ort: bool = typer.Option(False, "--ort", help="Also write model.qdq.ort (onnxruntime's ORT format, "
                                    "converted for the target's platform).")):
    """Write a device bundle: the models, a torch-free verifier (verify.pyz) and the one command to run."""
    from .bundle import write_bundle
    qdq = _qdq_of(source)
    b = write_bundle(qdq, out, data=data, target=None if target is None else target.value, ort=ort)
    console.print(f"bundle for target {b.target}: " + ", ".join(f"{n} ({_size(v)})" for n, v in b.files.items()),
                  highlight=False, soft_wrap=True, markup=False)
    console.print(f"on the device: cd {out.name} && {b.command}", highlight=False, soft_wrap=True, markup=False)
    typer.echo(str(b.dir))


def _size(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.0f} KiB"


def _qdq_of(source: Path) -> Path:
    """The QDQ file of a bundle source: the file itself, an export dir's, or a quantize run's (exported)."""
    from .pipeline import QArtifact, export_stage
    from .artifacts import Store
    if not source.exists():
        raise InputFileError(f"{source} does not exist", "pass what `zqtool quantize` or `zqtool export` printed")
    if source.is_file():
        return source
    if (source / "model.qdq.onnx").is_file():
        return source / "model.qdq.onnx"
    if (source / "quantized.pt").is_file():
        return export_stage(QArtifact.open(source), store=Store(source.resolve().parent.parent)).qdq_path
    raise InputFileError(f"{source} is neither a .qdq.onnx file, an export directory nor a quantize run",
                         "pass what `zqtool quantize` or `zqtool export` printed")


@app.command(epilog="Example: zqtool verify runs/onnx/<key>/model.qdq.onnx --data test.npz --threads 4 --json report.json")
@handle_errors
def verify(onnx_model: Path = typer.Argument(..., help="The QDQ ONNX model (model.qdq.onnx)."),
           data: Path = DataOpt,
           fp: Optional[Path] = typer.Option(None, "--fp", help="FP32 reference (default: model.fp32.onnx beside it; none: skip it)."),
           threads: int = ThreadsOpt, json_path: Optional[Path] = JsonOpt, limit: Optional[int] = LimitOpt,
           latency_runs: int = RunsOpt):
    """Stage 4: accuracy, agreement, latency, sizes and integer kernels on onnxruntime (no torch)."""
    from .progress import advance_hook
    from .verify import render_report
    from .verify import verify as verify_fn
    with _progress() as progress:
        report = verify_fn(onnx_model, data, fp_path=fp, threads=threads, limit=limit, latency_runs=latency_runs,
                           progress=advance_hook(progress))
    out_console.print(render_report(report))
    _write_json(json_path, report.to_dict())


@app.command(epilog="Example: zqtool run model.pt2 --input-shape 3,224,224 --num-classes 1000 --data val/ --method bnstat --bits 8")
@handle_errors
def run(model: Path = ModelArg, data: Path = DataOpt, method: MethodChoice = MethodOpt, bits: int = BitsOpt,
        wbits: Optional[int] = WbitsOpt, abits: Optional[int] = AbitsOpt, first_last_bits: int = FLOpt,
        residual_bits: Optional[int] = ResidualOpt, target: TargetChoice = TargetOpt, scheme: SchemeChoice = SchemeOpt,
        budget: BudgetChoice = BudgetOpt, recipe: Optional[Path] = RecipeOpt, set_: Optional[List[str]] = SetOpt,
        seed: int = SeedOpt, device: DeviceChoice = DeviceOpt, fmt: Optional[FormatChoice] = RunFormatOpt,
        threads: int = ThreadsOpt,
        json_path: Optional[Path] = JsonOpt, limit: Optional[int] = LimitOpt, latency_runs: int = RunsOpt,
        parity_images: int = typer.Option(256, "--parity-images", help="Images for the torch-vs-ORT parity check (0: skip)."),
        arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, mean: Optional[str] = MeanOpt,
        std: Optional[str] = StdOpt, num_classes: Optional[int] = ClassesOpt, trust_pickle: bool = PickleOpt,
        strict: bool = StrictOpt, size_budget: Optional[float] = SizeBudgetOpt,
        time_budget: Optional[str] = TimeBudgetOpt, out: Path = OutOpt):
    """All four stages: load → quantize → export → verify, plus the torch-vs-ORT parity check."""
    from .artifacts import Store
    from .pipeline import run as run_fn
    report = _run(run_fn, model, data, Store(out), method, bits, wbits, abits, first_last_bits, budget, recipe,
                  _with_time_budget(set_, time_budget), seed, device, fmt, threads, limit, latency_runs, parity_images,
                  _load_options(arch, input_shape, mean, std, num_classes, trust_pickle), target, strict,
                  size_budget, scheme, residual_bits)
    _write_json(json_path, report.to_dict())


def _run(run_fn, model, data, store, method, bits, wbits, abits, fl, budget, recipe, set_, seed, device, fmt,
         threads, limit, latency_runs, parity_images, load_options, target=DEFAULT_TARGET,
         strict: bool = False, size_budget: float | None = None, scheme: str | None = None,
         residual_bits: int | None = None):
    """Run the pipeline with progress and stage lines, print its report; returns the RunReport
    (a SimulatedRunReport for a simulation-only scheme)."""
    from .reports import SimulatedRunReport
    from .verify import render_report

    with _progress() as progress:
        report = run_fn(model, data, load_options=load_options, fmt=_v(fmt), threads=threads, limit=limit,
                        latency_runs=latency_runs, parity_images=parity_images, store=store, progress=progress,
                        on_stage=_stage_line(""), size_budget=size_budget,
                        **_quant_options(method, bits, wbits, abits, fl, budget, recipe, set_, seed, device,
                                         target, strict, scheme, residual_bits))
    if isinstance(report, SimulatedRunReport):
        _print_simulation(report)
        return report
    out_console.print(render_report(report.verify))
    if report.quantize.mixed_precision is not None:
        _print_mixed_precision(report.quantize.mixed_precision)
    console.print(_quantize_line(report.quantize), highlight=False, soft_wrap=True)
    if report.parity:
        console.print("parity torch vs onnxruntime: " + _parity_line(report.parity), highlight=False)
    return report


def _print_simulation(report) -> None:
    """A :class:`~toolchain.reports.SimulatedRunReport`: the simulation's accuracy and why there is no ONNX file."""
    r = report.simulation
    tag = report.quantize.scheme
    out_console.print(f"{report.quantize.method} w{tag['wbits']}a{tag['abits']} ({tag.get('protocol')} scheme, "
                      f"{r.simulation}) on {r.n_images} images: top-1 {r.top1:.2f} (FP32 {r.fp_top1:.2f}), "
                      f"top-5 {r.top5:.2f} (FP32 {r.fp_top5:.2f}), top-1 agreement {r.agreement_top1:.2f}%",
                      highlight=False, soft_wrap=True)
    console.print(_quantize_line(report.quantize), highlight=False, soft_wrap=True)
    console.print(f"[yellow]not exported:[/] {escape(r.reason)}; for comparison with published tables only",
                  highlight=False, soft_wrap=True)


def _stage_line(indent: str):
    """``on_stage`` for :func:`toolchain.pipeline.run`: one ✓ line per stage (seconds, cached, where)."""
    def on_stage(name, result, cached, seconds):
        where = getattr(result, "dir", None)
        console.print(f"{indent}[green]✓[/] {name:<8} {seconds:7.1f} s  {'(cached) ' if cached else ''}{where or ''}",
                      highlight=False)
    return on_stage


def _quantize_line(q) -> str:
    """How the quantized model was made (a :class:`~toolchain.reports.QuantizeSection`), one line."""
    extra = f" (+{q.method_s - q.wall_s:.1f} s to build reused cached artifacts)" if q.reused else ""
    when = "cached: built earlier in" if q.cached else "quantize wall time"
    recipe = "?" if q.recipe is None or q.recipe.file is None else q.recipe.file
    return (f"method {q.method} ({q.budget} budget, recipe {recipe}), {when} "
            f"{q.wall_s:.1f} s{extra} on {q.device}")


_SIMULATION = {"exact": "integer-exact sim", "fakequant": "fake-quant sim"}


def _parity_line(p) -> str:
    """The ``off`` / ``on`` levels of a :class:`~toolchain.reports.ParityResult`, one line."""
    parts = []
    for level in ("off", "on"):
        r = getattr(p, level)
        if r:
            ref = _SIMULATION.get(r.reference, "sim")
            lsb = float("nan") if r.max_diff_lsb is None else r.max_diff_lsb
            parts.append(f"ORT opt {level} vs {ref}: agreement {r.agreement_top1:.2f}%, max {lsb:.0f} LSB")
    return "; ".join(parts) or json.dumps(p.to_dict())


@app.command(epilog="Example: zqtool compare model.pt --arch resnet20 --data test.npz --methods minmax,bnstat --bits 8,4")
@handle_errors
def compare(model: Path = ModelArg, data: Path = DataOpt,
            methods: str = typer.Option("minmax,bnstat", "--methods", help="Comma-separated methods (see `zqtool list methods`); "
                                        "METHOD+adaround adds a row of the method ending with block reconstruction."),
            bits: str = typer.Option("8,6,4,3", "--bits", help="Comma-separated bit widths, weights = activations (2..8)."),
            first_last_bits: int = FLOpt, target: TargetChoice = TargetOpt, budget: BudgetChoice = BudgetOpt,
            set_: Optional[List[str]] = typer.Option(None, "--set", help="Method setting: METHOD.key=value for one method, "
                                                     "key=value for every listed method that has it, "
                                                     "mp.key=value for the mixed-precision rows (repeatable)."),
            seed: int = SeedOpt, device: DeviceChoice = DeviceOpt, fmt: Optional[FormatChoice] = RunFormatOpt,
            threads: str = typer.Option("1", "--threads", help="onnxruntime intra-op threads, comma-separated (e.g. 1,2; "
                                        "0 = onnxruntime's default: all cores): "
                                        "every pair is verified at each."),
            latency_runs: int = RunsOpt, limit: Optional[int] = LimitOpt,
            parity_images: int = typer.Option(256, "--parity-images", help="Images for the torch-vs-ORT parity check (0: skip)."),
            arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, mean: Optional[str] = MeanOpt,
            std: Optional[str] = StdOpt, num_classes: Optional[int] = ClassesOpt, trust_pickle: bool = PickleOpt,
            store: Path = typer.Option(Path("runs"), "--store", help="Root directory of the cached artifacts (as --out of `run`)."),
            out: Optional[Path] = typer.Option(None, "--out", help="Where compare.json, compare.md, compare.png and reports/ "
                                               "go (default: <store>/compare/<model file name>)."),
            no_plot: bool = typer.Option(False, "--no-plot", help="Do not write compare.png."),
            size_budget: Optional[str] = typer.Option(
                None, "--size-budget", help="Comma-separated fractions F (e.g. 0.6,0.5): after each method × bits "
                "pair, a mixed-precision row per F (activations at those bits, a weight width per layer so the "
                "model's bytes are at most F × the all-8-bit model's; see `zqtool quantize --help`)."),
            time_budget: Optional[str] = typer.Option(
                None, "--time-budget", help="Fit each pair's long work into this long (15m, 1h, 90s; none: the "
                "recipe's settings as they are); default: the recipe's (see `zqtool quantize --help`).")):
    """Every method × bit width through load → quantize → export → verify, one results table.

    Cached stages are reused, so an interrupted compare resumes where it stopped. Writes
    compare.json, compare.md (the README table) and compare.png (top-1 against bits); prints
    the path of compare.json. A pair that fails is a `failed` row and the others still run;
    the exit status is then 1.
    """
    import shlex

    from .artifacts import Store
    from .compare import compare as compare_fn
    from .compare import parse_methods, render_rows, split_overrides
    from .compare.options import parse_size_budgets
    method_list = parse_methods(methods)
    overrides = split_overrides(_with_time_budget(set_, time_budget), method_list)
    size_budgets = parse_size_budgets(size_budget)
    out = out or store / "compare" / Path(model).stem

    def on_pair_start(i, n, method, b, f=None):
        what = f"W{b}A{b}" if f is None else f"mixed precision, size budget {f:g}, A{b}"
        console.rule(f"[{i + 1}/{n}] {method} {what} (first/last {first_last_bits}-bit)")

    def on_pair(row, i, n):
        if row.ok:
            console.print(f"{row.method} {row.scheme_label}: top-1 {row.top1:.2f} ± "
                          f"{row.top1_stderr:.2f} (FP32 {row.fp32_top1:.2f}), {row.pair_wall_s:.1f} s",
                          highlight=False)
        else:
            console.print(f"[red]✗[/] {row.method} {row.scheme_label} failed: {row.error}",
                          highlight=False, soft_wrap=True)

    with _progress() as progress:
        result = compare_fn(model, data, methods=method_list, bits=bits, out_dir=out,
                            load_options=_load_options(arch, input_shape, mean, std, num_classes, trust_pickle),
                            first_last_bits=first_last_bits, target=_v(target), budget=_v(budget), overrides=overrides,
                            seed=seed, device=_v(device), fmt=_v(fmt), threads=threads, limit=limit, latency_runs=latency_runs,
                            parity_images=parity_images, store=Store(store), plot=not no_plot,
                            command=shlex.join(["zqtool", *sys.argv[1:]]) if sys.argv[1:2] == ["compare"] else None,
                            progress=progress, on_stage=_stage_line("  "), on_pair_start=on_pair_start,
                            on_pair=on_pair, size_budgets=size_budgets)
    rows = result.rows
    out_console.print(render_rows(rows))
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    console.print(f"{len(rows)} pair{'s' if len(rows) != 1 else ''} in {result.wall_s:.1f} s; "
                  f"wrote {result.outputs['md']}" + (f", {result.plot}" if result.plot else ""),
                  highlight=False, soft_wrap=True)
    typer.echo(result.outputs["json"])
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(rows)} pairs failed[/] (rows marked failed): "
                      + "; ".join(f"{r.method} {r.scheme_label}: {r.error}" for r in failed),
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command("list", epilog="Example: zqtool list methods")
@handle_errors
def list_(what: str = typer.Argument("all", help="archs, methods or all")):
    """List the zoo architectures and the registered methods."""
    if what in ("archs", "all"):
        from .models.registry import get_arch, list_archs
        out_console.print("[bold]architectures[/] (state_dicts need --arch NAME):")
        for name in list_archs():
            a = get_arch(name)
            out_console.print(f"  {name:<14} input {tuple(a.input_shape)}  classes {a.num_classes}")
    if what in ("methods", "all"):
        from .methods.registry import get_method, list_methods
        out_console.print("[bold]methods[/] (--method NAME; recipes/<name>.toml; "
                          "[BN] = reads BatchNorm statistics, refuses a model without BatchNorm; "
                          "\\[cls] = trains on class logits, refuses a segmentation model; cpu ≤ T = the cpu "
                          "recipe's time budget, --time-budget):")
        for name in list_methods():
            doc = (sys.modules[get_method(name).__module__].__doc__ or "").strip()
            first = " ".join(doc.split("\n\n")[0].split()) if doc else ""  # the whole first paragraph
            first = re.sub(r"^``\w+``:\s*", "", first).replace("``", "")
            m = get_method(name)
            tag = f"{'[BN]' if m.needs_batchnorm else '':<4} {'[cls]' if m.needs_class_logits else '':<5}"
            out_console.print(f"  {name:<8} {tag} {_cpu_time_budget(name):<11} {first}", highlight=False,
                              markup=False, soft_wrap=True)


def _cpu_time_budget(method: str) -> str:
    """``"cpu ≤ 10 min"``: the time budget of a method's cpu recipe ("" when it has none)."""
    from .methods.schedule import format_duration, parse_duration
    from .pipeline import method_config
    budget_s = parse_duration(method_config(method, "cpu")[1].time_budget)
    return "" if budget_s is None else f"cpu ≤ {format_duration(budget_s)}"


@app.command(epilog="Example: zqtool demo --bits 8")
@handle_errors
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo writes everything."),
         bits: List[int] = typer.Option([8, 4], "--bits", help="Bit widths to run (repeatable)."),
         threads: int = ThreadsOpt):
    """End to end on an embedded default: train a tiny CNN on scikit-learn's digits, then
    quantize it data-free (bnstat), export QDQ ONNX and verify on the held-out digits."""
    from .demo import prepare_demo
    from .artifacts import Store
    from .pipeline import run as run_fn
    model, data = prepare_demo(out, console=console)
    for b in bits:
        console.rule(f"bnstat W{b}A{b} (first/last 8-bit)")
        _run(run_fn, model, data, Store(out / "runs"), "bnstat", b, None, None, 8, "cpu", None,
             ["iterations=100", "num_images=128"], 0, "auto", "qdq", threads, None, 50, 256,
             {"arch": "tinynet"})


def main():
    app()


if __name__ == "__main__":
    main()
