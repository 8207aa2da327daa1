"""The four stages as Python functions, each with a content-keyed cached artifact.

``load_stage`` → :class:`FPArtifact` (``fp/<key>/model.pt2 + model.json``);
``quantize_stage`` → :class:`QArtifact` (``q/<key>/quantized.pt + quant.json + log.json``);
``export_stage`` → :class:`OnnxArtifact` (``onnx/<key>/model.qdq.onnx + model.fp32.onnx``);
``verify_stage`` → :class:`~toolchain.verify.results.VerifyReport` (``verify/<key>/report.json``);
``parity_stage`` → :class:`~toolchain.reports.ParityResult` (``parity/<key>/parity.json``).
``run`` chains them into a :class:`~toolchain.reports.RunReport`. The CLI (toolchain/cli.py) only
parses arguments and calls these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import Store, read_json, write_json
from .core.errors import ConfigError, InputFileError, UnsupportedModelError
from .core.keys import content_key, file_sha256
from .core.meta import ModelMeta
from .progress import advance_hook, null_progress
from .quant.scheme import QuantScheme

if TYPE_CHECKING:  # the report types load onnxruntime (toolchain.verify): imported where used
    from .reports import ParityResult, RunReport, SimulationResult
    from .verify.results import VerifyReport

FP_STAGE, Q_STAGE, ONNX_STAGE, VERIFY_STAGE, SYNTH_STAGE = "fp", "q", "onnx", "verify", "synth"


# --------------------------------------------------------------------------- artifacts
@dataclass(frozen=True)
class FPArtifact:
    """Stage 1 output: the canonical FP model (torch.export program) and its model card."""

    dir: Path
    key: str
    meta: ModelMeta

    def program(self):
        import torch
        return torch.export.load(str(self.dir / "model.pt2"))

    @classmethod
    def open(cls, d: Path) -> "FPArtifact":
        cfg = read_json(d / "config.json")
        return cls(Path(d), cfg["key"], ModelMeta.from_dict(read_json(d / "model.json")))


@dataclass(frozen=True)
class QArtifact:
    """Stage 2 output: the quantized model's state plus how it was made."""

    dir: Path
    key: str
    fp: FPArtifact
    method: str
    scheme: QuantScheme
    config: dict

    def model(self):
        """Rebuild the :class:`~toolchain.quant.model.QuantizedModel` (CPU, eval mode)."""
        import torch
        qm = self.reference_model()
        qm.load_state_dict(torch.load(self.dir / "quantized.pt", map_location="cpu", weights_only=True))
        return qm.eval()

    def reference_model(self):
        """The same graph with the FP program's own (BN-folded) weights — what the FP32 reference
        must be exported from: fine-tuning methods change the quantized model's weights."""
        from .quant.rewrite import quantize_graph
        return quantize_graph(self.fp.program(), self.scheme).eval()

    def config_json(self) -> dict:
        """The run's ``config.json`` (method, scheme, recipe file and budget, seed, device)."""
        return read_json(self.dir / "config.json")

    @classmethod
    def open(cls, d: str | Path) -> "QArtifact":
        """Open a quantize run directory (``runs/q/<key>``). Raises InputFileError if it is not one."""
        d = Path(d)
        if not (d / "config.json").is_file() or not (d / "quantized.pt").is_file():
            raise InputFileError(f"{d} is not a quantize run directory (no config.json/quantized.pt)",
                                 "pass the directory that `zqtool quantize` printed, e.g. runs/q/<key>")
        cfg = read_json(d / "config.json")
        fp = FPArtifact.open(Path(cfg["fp_dir"]))
        return cls(d, cfg["key"], fp, cfg["method"], QuantScheme(**cfg["scheme"]), cfg["method_config"])


@dataclass(frozen=True)
class OnnxArtifact:
    """Stage 3 output: the QDQ model and its FP32 reference."""

    dir: Path
    key: str
    fmt: str

    @property
    def qdq_path(self) -> Path:
        return self.dir / ("model.int4.onnx" if self.fmt == "int4" else "model.qdq.onnx")

    @property
    def fp32_path(self) -> Path:
        return self.dir / "model.fp32.onnx"


# --------------------------------------------------------------------------- stage 1
def load_stage(model: str | Path, *, arch: str | None = None, input_shape=None, mean=None, std=None,
               num_classes: int | None = None, trust_pickle: bool = False, store: Store | None = None,
               progress=null_progress) -> FPArtifact:
    """Stage 1: read a user's model file into the canonical FP artifact (cached by file content).

    Raises:
        InputFileError, ModelMismatchError, UnsafeModelError, UnsupportedModelError, ConfigError.
    """
    store = store or Store()
    path = Path(model)
    if not path.is_file():
        raise InputFileError(f"model file {path} does not exist" if not path.exists()
                             else f"{path} is not a file", "give the path of a .pt2, .pt/.pth/.th file")
    options = {"arch": arch, "input_shape": _list(input_shape), "mean": _list(mean), "std": _list(std),
               "num_classes": num_classes, "trust_pickle": trust_pickle}
    key = content_key({"stage": FP_STAGE, "sha256": file_sha256(path), **options})
    if store.done(FP_STAGE, key):
        return FPArtifact.open(store.path(FP_STAGE, key))
    import torch
    from .models.loader import load_model
    loaded = load_model(path, arch=arch, input_shape=input_shape, mean=mean, std=std,
                        num_classes=num_classes, trust_pickle=trust_pickle)
    with store.build(FP_STAGE, key, {"source": str(path.resolve()), **options}) as d:
        torch.export.save(loaded.program, str(d / "model.pt2"))
        write_json(d / "model.json", loaded.meta.to_dict())
    return FPArtifact.open(store.path(FP_STAGE, key))


def _list(v):
    return None if v is None else list(v)


# --------------------------------------------------------------------------- stage 2
def resolve_device(device: str = "auto"):
    import torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available", "use --device cpu or auto")
    return torch.device(device)


def method_config(method: str, budget: str = "cpu", recipe: str | Path | None = None,
                  overrides: dict | None = None):
    """(Method class, resolved frozen config): the recipe's ``[budget]`` table, then ``overrides``
    (``--set`` values: dotted or bare keys, strings typed by the config; :mod:`toolchain.methods.config`).

    Raises:
        ConfigError: an unknown method, no such recipe/budget, a bad setting key or value.
    """
    from .methods.recipes import load_recipe
    from .methods.registry import get_method
    from .methods.registry import method_config as build
    get_method(method)  # an unknown method is named as such, not as a missing recipe
    return build(method, load_recipe(method, budget, recipe), overrides or {})


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _method_teacher(fp: FPArtifact, cls, method: str, seed: int, device: str, needs_batchnorm: bool | None = None):
    """(device, FP program, eval-mode FP GraphModule on the device) for a method's
    :class:`~toolchain.methods.registry.MethodContext` (which freezes it); seeds the RNGs.

    Raises UnsupportedModelError when the method (``needs_batchnorm``: this configuration of it)
    needs BN statistics and the model has no BN, or class logits and the model is not a classifier.
    """
    from .methods.registry import get_method, list_methods
    from .models.loader import require_batchnorm
    from .quant.rewrite import fp_graph_module
    dev = resolve_device(device)
    program = fp.program()
    if cls.needs_class_logits and fp.meta.task != "classification":
        dense = ", ".join(f"--method {m}" for m in list_methods() if not get_method(m).needs_class_logits)
        raise UnsupportedModelError(
            f"method {method} trains on class logits and this is a {fp.meta.task} model "
            f"(per-pixel output); methods that apply: {dense}")
    if cls.needs_batchnorm if needs_batchnorm is None else needs_batchnorm:
        label = method if cls.needs_batchnorm else f"{method} with reconstruct or bias_correction (on a BN-statistics synthetic set)"
        require_batchnorm(program, label, tuple(m for m in list_methods() if not get_method(m).needs_batchnorm))
    seed_everything(seed)
    return dev, program, fp_graph_module(program).to(dev).eval()


#: bumped when the same method, config, scheme and seed build a different quantized model (invalidates
#: cached quantize runs); 2: the scheme's target narrows int16-pair-unsafe layers, depthwise convs exempt;
#: 3: building a cached synthetic set no longer moves the random stream the method continues with
REWRITE_VERSION = 3


def quantize_stage(fp: FPArtifact, *, method: str = "bnstat", scheme: QuantScheme | None = None,
                   budget: str = "cpu", recipe: str | Path | None = None, overrides: dict | None = None,
                   seed: int = 0, device: str = "auto", store: Store | None = None, strict: bool = False,
                   progress=null_progress) -> QArtifact:
    """Stage 2: zero-shot quantization with a registered method (cached by inputs + config + seed).

    ``strict``: refuse a graph holding ops zqtool has no role for (else they run in float between
    DequantizeLinear and QuantizeLinear and ``quant.json`` counts them under ``unknown_ops``).

    Raises:
        ConfigError (unknown method/setting, bad bits), UnsupportedModelError (e.g. no BatchNorm
        for a method that needs BN statistics; an unknown op under ``strict``).
    """
    store = store or Store()
    scheme = scheme or QuantScheme()
    cls, cfg = method_config(method, budget, recipe, overrides)
    cfg = _fit_to_scheme(cfg, scheme, overrides or {}, progress)
    cfg_dict = dataclasses.asdict(cfg)
    key = content_key({"stage": Q_STAGE, "fp": fp.key, "method": method, "config": cfg_dict,
                       "scheme": scheme.to_dict(), "seed": seed, "rewrite": REWRITE_VERSION})
    if store.done(Q_STAGE, key):
        q = QArtifact.open(store.path(Q_STAGE, key))
        if strict and read_json(q.dir / "quant.json").get("unknown_ops"):
            from .quant.rewrite import quantize_graph
            quantize_graph(fp.program(), scheme, strict=True)  # raises the error a fresh build raises
        return q

    import torch
    from .methods.registry import MethodContext
    from .quant.rewrite import quantize_graph

    dev, program, teacher = _method_teacher(fp, cls, method, seed, device, cls(cfg).needs_synthetic_images)
    qmodel = quantize_graph(program, scheme, strict=strict).to(dev)
    float_ops, unknown_ops = qmodel.float_ops, qmodel.unknown_ops

    reused: dict[str, float] = {}  # cached artifacts this run reused → seconds they took to build
    cached = _synth_cache(store, fp, seed, reused)
    run_cfg, schedule = _fit_schedule(cls, cfg, scheme, teacher, fp, seed, dev, store, progress)

    from .methods.recipes import recipe_origin
    recipe_used = {"file": recipe_origin(method, recipe), "budget": budget}
    config = {"fp_dir": str(fp.dir.resolve()), "fp": fp.key, "method": method, "method_config": cfg_dict,
              "scheme": scheme.to_dict(), "seed": seed, "budget": budget, "recipe": recipe_used, "device": str(dev)}
    with store.build(Q_STAGE, key, config) as d:
        ctx = MethodContext(teacher=teacher, qmodel=qmodel, meta=fp.meta, scheme=scheme, device=dev,
                            seed=seed, workdir=store.root / "work" / key, progress=progress, cached=cached)
        t0 = time.perf_counter()
        qmodel = cls(run_cfg).quantize(ctx)
        wall = time.perf_counter() - t0
        qmodel = qmodel.cpu().eval()
        torch.save(qmodel.state_dict(), d / "quantized.pt")
        # wall_s: this run; method_s: what the method costs from scratch (cached artifacts' build time added)
        method_s = wall + sum(reused.values())
        sched = None if schedule is None else {**schedule.to_dict(), "wall_s": round(wall, 1)}
        write_json(d / "quant.json", {"method": method, "scheme": scheme.to_dict(), "recipe": recipe_used,
                                      "method_config": dataclasses.asdict(run_cfg), "schedule": sched,
                                      "wall_s": wall, "method_s": method_s,
                                      "reused": reused, "device": str(dev), "float_ops": float_ops,
                                      "unknown_ops": unknown_ops, "quantizers": qmodel.summary()})
        write_json(d / "log.json", {"wall_s": wall, "method_s": method_s, "recipe": recipe_used,
                                    "schedule": sched, **ctx.log})
    return QArtifact.open(store.path(Q_STAGE, key))


#: the post-steps that work on the deploy scheme's folded, exported layers → their "off" value
DEPLOY_POST_STEPS = {"reconstruct": "none", "bias_correction": False}


def _fit_to_scheme(cfg, scheme: QuantScheme, overrides: dict, progress):
    """``cfg`` checked, before any work, against a scheme without the deploy scheme's folded BN or
    exported blocks (``paper``: BN unfolded, simulation only). A recipe's post-steps (block
    reconstruction, bias correction: :data:`DEPLOY_POST_STEPS`) give way there and say so; the same
    settings given by the user (``--set reconstruct=…``) are refused.

    Raises:
        ConfigError: ``bn_mode = "qat"`` without folded BN, or the user's post-step on a
        simulation-only scheme.
    """
    rules = scheme.rules
    student = getattr(cfg, "student", None)
    if not rules.fold_bn and getattr(student, "bn_mode", "folded") == "qat":
        raise ConfigError(f"bn_mode=qat trains the folded BN back in the loop; the {rules.name} scheme keeps BN "
                          "unfolded already", "drop --set bn_mode=qat (its BN's γ and β train with the weights)")
    active = {k: getattr(cfg, k) for k, off in DEPLOY_POST_STEPS.items() if getattr(cfg, k, off) != off}
    if rules.exportable or not active:
        return cfg
    given = [k for k in active if k in overrides]
    if given:
        raise ConfigError(f"{', '.join(f'{k}={active[k]}' for k in given)} works on the deploy scheme's folded, "
                          f"exported layers, not the {rules.name} scheme's",
                          f"drop {' and '.join(f'--set {k}' for k in given)}, or --scheme")
    from .progress import say
    say(progress, f"{rules.name} scheme: the recipe's {', '.join(f'{k}={v}' for k, v in active.items())} "
                  "is off (it works on the deploy scheme's folded, exported layers)")
    return dataclasses.replace(cfg, **{k: DEPLOY_POST_STEPS[k] for k in active})


@contextlib.contextmanager
def preserved_rng():
    """Run a block without moving the random streams the caller sees (torch CPU/CUDA, numpy, random).

    A cached artifact that is rebuilt consumes random numbers that a reused one does not; without
    this, the same seed would give a different quantized model depending on what the store held.
    """
    import random

    import numpy as np
    import torch
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _fit_schedule(cls, cfg, scheme: QuantScheme, teacher, fp: FPArtifact, seed: int, dev, store: Store, progress):
    """(the config to run, its :class:`~toolchain.methods.schedule.SchedulePlan` or None): with long
    phases, one timed FP pass estimates the duration and a ``time_budget`` lowers the phases' settings
    to fit (:func:`~toolchain.methods.schedule.fit_schedule`); the plan is printed before the work."""
    from .methods.schedule import parse_duration

    def is_cached(kind: str, k: dict) -> bool:
        return store.done(SYNTH_STAGE, _synth_key(fp, kind, k, seed))

    costs: dict[str, float] = {}  # the method's own measured costs (Method.probe_costs), after the pass

    def phases_of(c):
        return cls(c, costs).phases(scheme, is_cached)

    def probe(pass_s: float) -> dict[str, float]:
        costs.update(cls.probe_costs(teacher, fp.meta.input_shape, dev, pass_s))
        return costs

    return _fitted(cfg, phases_of, parse_duration(cfg.time_budget), teacher, fp.meta.input_shape, dev, progress,
                   probe=probe)


def _fitted(cfg, phases_of, budget_s, model, input_shape, dev, progress, label: str = "", probe=None):
    """(``cfg`` fitted to ``budget_s`` by one timed pass of ``model``, the plan printed with ``label``;
    or (``cfg``, None) when every phase is cached). ``probe(pass_s)``: times what else the phases'
    costs need and returns it (name → FP-pass units per image, recorded in the plan)."""
    from .methods.schedule import fit_schedule, probe_pass_seconds
    from .progress import say
    if not any(not p.cached for p in phases_of(cfg)):
        return cfg, None
    with preserved_rng():
        pass_s = probe_pass_seconds(model, input_shape, dev)
        costs = probe(pass_s) if probe is not None else {}
    run_cfg, plan = fit_schedule(cfg, phases_of, budget_s, pass_s, costs)
    say(progress, label + plan.summary())
    return run_cfg, plan


def _synth_key(fp: FPArtifact, kind: str, k: dict, seed: int) -> str:
    return content_key({"stage": SYNTH_STAGE, "fp": fp.key, "kind": kind, "config": k, "seed": seed})


def _synth_cache(store: Store, fp: FPArtifact, seed: int, reused: dict, built: dict | None = None):
    """``MethodContext.cached``: artifacts under ``synth/<key>/images.pt`` keyed on the FP model,
    the kind, the settings and the seed. ``reused[kind/key]`` gets the build seconds of each reused
    artifact; ``built[kind]`` (if given) the directory of each artifact returned."""
    import torch

    def cached(kind: str, k: dict, build):
        skey = _synth_key(fp, kind, k, seed)
        d = store.path(SYNTH_STAGE, skey)
        if built is not None:
            built[kind] = d
        if store.done(SYNTH_STAGE, skey):
            reused[f"{kind}/{skey}"] = read_json(d / "config.json").get("build_s", 0.0)
            return torch.load(d / "images.pt", weights_only=True)
        t0 = time.perf_counter()
        with preserved_rng():  # the caller's random stream is the same whether the set was built or reused
            images = build()
        with store.build(SYNTH_STAGE, skey, {"fp": fp.key, "kind": kind, "config": k, "seed": seed,
                                             "build_s": time.perf_counter() - t0}) as tmp:
            torch.save(images, tmp / "images.pt")
        return images
    return cached


@dataclass(frozen=True)
class SynthArtifact:
    """A method's cached synthetic set: ``images`` (N, C, H, W) float32 in the normalized input
    space (for gznq the learned per-image means), ``labels`` (N,) int64 (or None), and the
    directory it is stored in."""

    dir: Path
    images: object
    labels: object
    meta: ModelMeta


def synth_stage(fp: FPArtifact, *, method: str = "gznq", budget: str = "cpu", recipe: str | Path | None = None,
                overrides: dict | None = None, seed: int = 0, device: str = "auto", store: Store | None = None,
                progress=null_progress) -> SynthArtifact:
    """Build (or reuse) the synthetic set a method calibrates on, the same artifact ``quantize``
    reuses. Only methods with a ``synthesize(ctx)`` (e.g. gznq) have one.

    Raises:
        ConfigError (no synthetic set for ``method``, bad settings), UnsupportedModelError.
    """
    store = store or Store()
    cls, cfg = method_config(method, budget, recipe, overrides)
    if not hasattr(cls, "synthesize"):
        raise ConfigError(f"method {method!r} has no synthetic set to show", "use --method gznq")
    from .methods.registry import MethodContext
    dev, program, teacher = _method_teacher(fp, cls, method, seed, device)
    built: dict = {}
    ctx = MethodContext(teacher=teacher, qmodel=None, meta=fp.meta, scheme=None, device=dev, seed=seed,
                        workdir=store.root / "work" / content_key({"stage": SYNTH_STAGE, "fp": fp.key, "method": method,
                                                                    "config": dataclasses.asdict(cfg), "seed": seed}),
                        progress=progress,
                        cached=_synth_cache(store, fp, seed, {}, built))
    out = cls(cfg).synthesize(ctx)
    images, labels = (out.get("mean", out.get("images")), out.get("labels")) if isinstance(out, dict) else (out, None)
    return SynthArtifact(next(iter(built.values())), images, labels, fp.meta)


# --------------------------------------------------------------------------- mixed precision
MP_STAGE = "mp"
#: bumped when the same settings measure different sensitivities or file sizes (invalidates cached ones)
SENSITIVITY_VERSION = 1


@dataclass(frozen=True)
class MPArtifact:
    """A ``--size-budget`` plan: the scheme with per-layer weight widths (``scheme.layer_wbits``) and
    the typed plan (:class:`~toolchain.reports.MixedPrecisionPlan`); ``dir`` holds the cached
    sensitivities and file size it was made from (``mp/<key>/sensitivity.json``)."""

    dir: Path
    key: str
    scheme: QuantScheme
    plan: object


def mixed_precision_stage(fp: FPArtifact, *, size_budget: float, scheme: QuantScheme | None = None,
                          method: str = "bnstat", budget: str = "cpu", recipe: str | Path | None = None,
                          overrides: dict | None = None, seed: int = 0, device: str = "auto",
                          store: Store | None = None, progress=null_progress) -> MPArtifact:
    """Data-free mixed precision (:mod:`toolchain.methods.sensitivity`): per-layer sensitivities on the
    ZeroQ synthetic set and the all-8-bit file's bytes (cached as ``mp/<key>``, keyed by the FP model,
    the scheme's activation widths and target, the ``mp.`` settings with their synthetic set, and the
    seed), then the widths that fit ``size_budget`` × the all-8-bit model's bytes (not cached: cheap).

    ``overrides``: the run's ``--set`` values; the ``mp.`` ones are read here (the method's own pick the
    synthetic set when the method is bnstat). Leaves the caller's random streams as they were.

    Raises:
        ConfigError: ``size_budget`` outside (0, 1] or below what the lowest widths allow; a bad setting.
        UnsupportedModelError: the model has no BatchNorm (the ZeroQ set needs its statistics).
    """
    from .methods.sensitivity import mixed_precision_config, plan, split_overrides
    from .quant.allocate import check_size_budget
    from .quant.size import get_size_model
    check_size_budget(size_budget)
    store = store or Store()
    base = dataclasses.replace(scheme or QuantScheme(), layer_wbits=())
    method_overrides, mp_overrides = split_overrides(overrides)
    method_cfg = method_config(method, budget, recipe, method_overrides)[1]
    mp_cfg = _fit_mp_synthesis(fp, mixed_precision_config(method_cfg, budget, mp_overrides), method_cfg.time_budget,
                               seed, device, store, progress)
    size_model = get_size_model(mp_cfg.size_model)
    key = content_key({"stage": MP_STAGE, "fp": fp.key, "config": dataclasses.asdict(mp_cfg), "seed": seed,
                       "scheme": {k: v for k, v in base.to_dict().items() if k != "wbits"},
                       "version": SENSITIVITY_VERSION})
    if not store.done(MP_STAGE, key):
        with preserved_rng():
            _measure_sensitivity(fp, base, mp_cfg, size_model.file_format, key, seed, device, store, progress)
    from .methods.sensitivity import SensitivityResult
    d = store.path(MP_STAGE, key)
    saved = read_json(d / "sensitivity.json")
    sens = SensitivityResult.from_dict(saved["sensitivity"])
    new_scheme, mp = plan(sens, base, size_budget, size_model=size_model.name, file_bytes=saved["file_bytes"])
    mp = dataclasses.replace(mp, sensitivity_dir=str(d), sensitivity_s=saved.get("build_s"))
    return MPArtifact(d, key, new_scheme, mp)


def _fit_mp_synthesis(fp: FPArtifact, mp_cfg, time_budget, seed: int, device: str, store: Store, progress):
    """``mp_cfg`` with its synthetic set fitted to the method's ``time_budget`` as the method's own
    synthesis is (:func:`~toolchain.methods.schedule.fit_schedule`; the plan is printed); unchanged
    without a budget or when the set is already cached."""
    from .methods.bn_stats import bn_step_cost, probe_bn_step_costs
    from .methods.schedule import parse_duration, synthesis_phase
    from .quant.rewrite import fp_graph_module
    budget_s = parse_duration(time_budget)
    costs: dict[str, float] = {}  # the probed BN-statistics step, as a method's synthesis counts it

    def phases_of(c):
        cached = store.done(SYNTH_STAGE, _synth_key(fp, "synth", dataclasses.asdict(c.synthesis), seed))
        return [synthesis_phase("sensitivity set", c.synthesis, cached, bn_step_cost(costs))]

    if budget_s is None or phases_of(mp_cfg)[0].cached:
        return mp_cfg
    dev = resolve_device(device)
    teacher = fp_graph_module(fp.program()).to(dev).eval()

    def probe(pass_s: float) -> dict[str, float]:
        costs.update(probe_bn_step_costs(teacher, fp.meta.input_shape, dev, pass_s))
        return costs

    return _fitted(mp_cfg, phases_of, budget_s, teacher, fp.meta.input_shape, dev, progress, "mixed precision ",
                   probe=probe)[0]


def method_overrides(overrides: dict | None, size_budget: float | None) -> tuple[dict, dict]:
    """(the method's ``--set`` values, all of them) for a run with or without ``size_budget``: the
    ``mp.`` ones go to :func:`mixed_precision_stage` only.

    Raises:
        ConfigError: ``mp.`` settings without a size budget.
    """
    from .methods.sensitivity import MP_PREFIX
    overrides = dict(overrides or {})
    mp_keys = [k for k in overrides if k.startswith(MP_PREFIX)]
    if mp_keys and size_budget is None:
        raise ConfigError(f"--set {mp_keys[0]}=… is a mixed-precision setting and there is no --size-budget",
                          "add --size-budget F (e.g. 0.6), or drop the mp. settings")
    return {k: v for k, v in overrides.items() if not k.startswith(MP_PREFIX)}, overrides


def export_format(fmt: str | None, mp: MPArtifact | None) -> str:
    """The export format of a run: ``fmt`` when given; else the one whose file holds the bytes the size
    budget counted (``int4`` for the ``int4`` size model), else ``qdq``."""
    if fmt is not None:
        return fmt
    return mp.plan.file_format if mp is not None and mp.plan.exported else "qdq"


def _measure_sensitivity(fp: FPArtifact, scheme: QuantScheme, cfg, file_format: str, key: str, seed: int,
                         device: str, store: Store, progress) -> None:
    """Build ``mp/<key>``: the synthetic set (cached as bnstat's), the sensitivities and the bytes of the
    all-8-bit model written in ``file_format`` (calibrated min-max on the synthetic images)."""
    from .export.onnx_writer import written_bytes
    from .methods.bnstat import synthetic_set
    from .methods.checkpoint import Checkpointer
    from .methods.registry import MethodContext
    from .methods.sensitivity import measure_sensitivity
    from .graph.ops import has_batchnorm
    from .quant.calibrate import calibrate, set_input_range
    from .quant.rewrite import fp_graph_module, quantize_graph
    dev = resolve_device(device)
    program = fp.program()
    if not has_batchnorm(program):
        raise UnsupportedModelError("--size-budget measures layer sensitivity on a ZeroQ synthetic set, which "
                                    "needs BatchNorm statistics, and this model has no BatchNorm layer",
                                    "drop --size-budget; if the BatchNorms were folded, load the unfolded checkpoint")
    seed_everything(seed)  # the synthetic set a method with this seed would build
    workdir = store.root / "work" / key
    ctx = MethodContext(teacher=fp_graph_module(program).to(dev).eval(), qmodel=None, meta=fp.meta, scheme=scheme,
                        device=dev, seed=seed, workdir=workdir, progress=progress,
                        cached=_synth_cache(store, fp, seed, {}))
    images = synthetic_set(ctx, cfg.synthesis)
    t0 = time.perf_counter()
    ckpt = Checkpointer(workdir, "sensitivity.ckpt", {"key": key})
    sens = measure_sensitivity(program, scheme, images, cfg, device=dev, progress=progress, checkpointer=ckpt)
    task = progress(f"measuring the all-8-bit {file_format} file's bytes", 1)
    try:
        ref = quantize_graph(program, dataclasses.replace(scheme, layer_wbits=tuple((l.name, 8) for l in sens.layers)))
        x = images[: cfg.images]
        skip = ["act_quant.input"] if set_input_range(ref, fp.meta.mean, fp.meta.std) else []
        calibrate(ref.eval(), [x[i:i + cfg.batch_size] for i in range(0, len(x), cfg.batch_size)], "minmax", skip=skip)
        # with the metadata export_stage adds (values of typical length), so the bytes are the exported file's
        file_bytes = written_bytes(ref, fp.meta, fmt=file_format, extra_props={
            "zqtool.method": "bnstat", "zqtool.scheme": "w4-8a8-mp", "zqtool.target": scheme.target})
        task.advance(1)
    finally:
        task.close()
    with store.build(MP_STAGE, key, {"fp": fp.key, "scheme": scheme.to_dict(), "config": dataclasses.asdict(cfg),
                                     "seed": seed, "build_s": time.perf_counter() - t0}) as d:
        write_json(d / "sensitivity.json", {"sensitivity": sens.to_dict(), "file_format": file_format,
                                            "file_bytes": file_bytes, "build_s": time.perf_counter() - t0})
    ckpt.clear()


# --------------------------------------------------------------------------- stage 3
EXPORT_FORMATS = ("qdq", "int4")
#: bumped when the ONNX written for the same quantized model changes (invalidates cached exports);
#: 2: the FP32 reference comes from the FP program, not from the (possibly fine-tuned) quantized model;
#: 3: residual adds of the portable target are written as Sum (float on every CPU), not fused to QLinearAdd;
#: 4: INT4/UINT4 initializers as packed raw bytes (two codes a byte), zero points shared by value (int4 files
#: 25% smaller at W4; qdq files hold the same tensors, only onnxsim's names of folded constants differ)
EXPORT_WRITER_VERSION = 4


def export_stage(q: QArtifact, *, fmt: str = "qdq", store: Store | None = None,
                 progress=null_progress) -> OnnxArtifact:
    """Stage 3: write the QDQ ONNX model and its FP32 reference, simplified with onnxsim."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    rules = q.scheme.rules
    if not rules.exportable:
        raise ConfigError(f"{q.dir} uses the {rules.name} scheme, which is simulation only: {rules.why_simulated}",
                          "quantize again without --scheme (the deploy scheme) to get a model to export; "
                          "`zqtool run --scheme paper` reports the simulation's accuracy")
    store = store or Store()
    key = content_key({"stage": ONNX_STAGE, "q": q.key, "format": fmt, "writer": EXPORT_WRITER_VERSION})
    art = OnnxArtifact(store.path(ONNX_STAGE, key), key, fmt)
    if store.done(ONNX_STAGE, key):
        return art
    from .export import SimplifyWarning, write_fp32, write_qdq
    qmodel = q.model()
    props = {"zqtool.method": q.method, "zqtool.scheme": q.scheme.tag, "zqtool.target": q.scheme.target}
    with store.build(ONNX_STAGE, key, {"q_dir": str(q.dir.resolve()), "q": q.key, "format": fmt}) as d, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SimplifyWarning)
        task = progress("writing and simplifying ONNX (QDQ, FP32)", 2)
        write_qdq(qmodel, q.fp.meta, d / art.qdq_path.name, fmt=fmt, extra_props=props)
        task.advance(1)
        write_fp32(q.reference_model(), q.fp.meta, d / art.fp32_path.name, extra_props=props)
        task.close()
        write_json(d / "export.json", {"format": fmt, "warnings": [str(w.message) for w in caught
                                                                   if issubclass(w.category, SimplifyWarning)]})
    return art


# --------------------------------------------------------------------------- stage 4
def verify_stage(onnx: OnnxArtifact, data: str | Path, *, threads: int = 1, limit: int | None = None,
                 latency_runs: int = 50, task: str | None = None, store: Store | None = None,
                 progress=null_progress) -> VerifyReport:
    """Stage 4 (cached): verify the QDQ model against its FP32 reference on labelled data
    (``task``: the model card's; "segmentation" accepts an .npz of images with optional masks).

    Returns the :class:`~toolchain.verify.results.VerifyReport`, stored as ``verify/<key>/report.json``
    (its ``to_dict()``) and read back from there when the store has it.
    """
    from .data import open_eval_set
    from .verify import VerifyReport, verify
    store = store or Store()
    evalset = open_eval_set(data, limit=limit, task=task)
    key = content_key({"stage": VERIFY_STAGE, "onnx": onnx.key, "fmt": onnx.fmt, "data": evalset.fingerprint(),
                       "threads": threads, "limit": limit, "latency_runs": latency_runs})
    if store.done(VERIFY_STAGE, key):
        return VerifyReport.from_dict(read_json(store.path(VERIFY_STAGE, key) / "report.json"))
    report = verify(onnx.qdq_path, evalset, fp_path=onnx.fp32_path, threads=threads, limit=limit,
                    latency_runs=latency_runs, progress=advance_hook(progress))
    with store.build(VERIFY_STAGE, key, {"onnx": onnx.key, "data": str(data), "threads": threads,
                                         "limit": limit}) as d:
        write_json(d / "report.json", report.to_dict())
    return report


#: most images the parity check of a segmentation model compares (memory: all output pixels of both runs)
SEG_PARITY_IMAGES = 32
PARITY_STAGE = "parity"


def parity_stage(q: QArtifact, onnx: OnnxArtifact, data: str | Path, *, n_images: int = 256,
                 store: Store | None = None) -> ParityResult:
    """Torch simulation vs onnxruntime QDQ on the first ``n_images`` eval images (cached as
    ``parity/<key>/parity.json``, the result's ``to_dict()``).

    A segmentation model is checked on at most :data:`SEG_PARITY_IMAGES` images: the comparison
    holds every output pixel of both runs in memory (21×224×224 floats an image for LR-ASPP).
    """
    store = store or Store()
    if q.fp.meta.task == "segmentation":
        n_images = min(n_images, SEG_PARITY_IMAGES)
    from .data import open_eval_set
    from .reports import ParityResult
    evalset = open_eval_set(data, limit=n_images, task=q.fp.meta.task)
    key = content_key({"stage": PARITY_STAGE, "onnx": onnx.key, "data": evalset.fingerprint(), "n": n_images})
    if store.done(PARITY_STAGE, key):
        return ParityResult.from_dict(read_json(store.path(PARITY_STAGE, key) / "parity.json"))
    import numpy as np
    import torch
    from .export.parity import check_parity
    xs = [x for x, _ in evalset.batches(q.fp.meta, 64)]
    inputs = torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0)
    result = check_parity(q.model(), onnx.qdq_path, inputs)
    with store.build(PARITY_STAGE, key, {"onnx": onnx.key, "n": n_images}) as d:
        write_json(d / "parity.json", result.to_dict())
    return result


SIMULATE_STAGE = "simulate"


def simulate_stage(q: QArtifact, data: str | Path, *, limit: int | None = None, store: Store | None = None,
                   progress=null_progress) -> SimulationResult:
    """Instead of export and verify, for a scheme that is simulation only (``paper``): the torch
    simulation's top-1/top-5 and the FP model's on the eval images (cached as ``simulate/<key>/simulation.json``).

    Raises:
        ConfigError: the scheme is exportable (measure it with export + verify instead);
        UnsupportedModelError: a segmentation model (the paper protocol is for classifiers' tables).
    """
    from .data import open_eval_set
    from .reports import SimulationResult
    rules = q.scheme.rules
    if rules.exportable:
        raise ConfigError(f"the {rules.name} scheme is deployable: measure it on onnxruntime",
                          "use `zqtool export` and `zqtool verify` (or `zqtool run`)")
    if q.fp.meta.task != "classification":
        raise UnsupportedModelError(f"the {rules.name} scheme is simulated for classifiers only, "
                                    f"not a {q.fp.meta.task} model", "drop --scheme")
    store = store or Store()
    evalset = open_eval_set(data, limit=limit, task=q.fp.meta.task)
    key = content_key({"stage": SIMULATE_STAGE, "q": q.key, "data": evalset.fingerprint(), "limit": limit})
    if store.done(SIMULATE_STAGE, key):
        return SimulationResult.from_dict(read_json(store.path(SIMULATE_STAGE, key) / "simulation.json"))
    from .quant.rewrite import fp_graph_module
    from .simulate import simulate_accuracy
    result = simulate_accuracy(q.model(), fp_graph_module(q.fp.program()), evalset, q.fp.meta,
                               reason=rules.why_simulated, limit=limit, progress=advance_hook(progress))
    with store.build(SIMULATE_STAGE, key, {"q": q.key, "data": str(data), "limit": limit}) as d:
        write_json(d / "simulation.json", result.to_dict())
    return result


# --------------------------------------------------------------------------- all four
#: the store folder each stage of :func:`run` writes (its ``on_stage`` names)
RUN_STAGES = {"load": FP_STAGE, "mixed": MP_STAGE, "quantize": Q_STAGE, "export": ONNX_STAGE,
              "verify": VERIFY_STAGE, "parity": PARITY_STAGE, "simulate": SIMULATE_STAGE}


def _stored(store: Store, stage: str) -> set[str]:
    """The finished artifacts of ``stage`` in the store (temporary build folders start with a dot)."""
    d = store.root / stage
    return {p.name for p in d.iterdir() if not p.name.startswith(".")} if d.is_dir() else set()


def run(model: str | Path, data: str | Path, *, load_options: dict | None = None, method: str = "bnstat",
        scheme: QuantScheme | None = None, budget: str = "cpu", recipe=None, overrides=None, seed: int = 0,
        device: str = "auto", fmt: str | None = "qdq", threads: int = 1, limit: int | None = None,
        latency_runs: int = 50, parity_images: int = 256, store: Store | None = None, strict: bool = False,
        size_budget: float | None = None, progress=null_progress, on_stage=None) -> RunReport:
    """Chain load → quantize → export → verify (+ parity); every stage is cached.

    ``on_stage(name, result, cached: bool, seconds)`` is called after each stage (for the CLI's log
    lines; ``name`` one of :data:`RUN_STAGES`, ``result`` what the stage returned); ``cached`` is True
    when the stage built nothing and its result was read from the store.

    ``size_budget`` F: mixed precision (:func:`mixed_precision_stage`, stage ``"mixed"`` before
    quantize): per-layer weight widths within F × the all-8-bit model's bytes, ``--set mp.…`` settings
    in ``overrides``; ``fmt`` None exports the format whose bytes the budget counted (:func:`export_format`).

    A scheme that is simulation only (``paper``, :mod:`toolchain.quant.protocol`) is not exported:
    after quantize the run measures the torch simulation (:func:`simulate_stage`, stage ``"simulate"``).

    Returns:
        a :class:`~toolchain.reports.RunReport`: the verify report (its warnings extended with
        ops that had no quantized form) with ``quantize``, ``parity`` and ``artifacts`` sections;
        for a simulation-only scheme a :class:`~toolchain.reports.SimulatedRunReport`.
    """
    from .reports import Artifacts, RunReport, SimulatedRunReport
    store = store or Store()
    note = on_stage or (lambda *a: None)
    cached_stages: dict[str, bool] = {}

    def timed(name, fn):
        """Run one stage; it was cached when it added no artifact to its store folder."""
        before, t0 = _stored(store, RUN_STAGES[name]), time.perf_counter()
        out = fn()
        cached_stages[name] = _stored(store, RUN_STAGES[name]) <= before
        note(name, out, cached_stages[name], time.perf_counter() - t0)
        return out

    overrides, mp = method_overrides(overrides, size_budget), None
    if size_budget is not None:
        from .quant.allocate import check_size_budget
        check_size_budget(size_budget)  # before any work
    fp = timed("load", lambda: load_stage(model, store=store, progress=progress, **(load_options or {})))
    if size_budget is not None:
        mp = timed("mixed", lambda: mixed_precision_stage(
            fp, size_budget=size_budget, scheme=scheme, method=method, budget=budget, recipe=recipe,
            overrides=overrides[1], seed=seed, device=device, store=store, progress=progress))
        scheme = mp.scheme
    fmt = export_format(fmt, mp)
    q = timed("quantize", lambda: quantize_stage(fp, method=method, scheme=scheme, budget=budget,
                                                 recipe=recipe, overrides=overrides[0], seed=seed,
                                                 device=device, store=store, strict=strict,
                                                 progress=progress))
    if not q.scheme.rules.exportable:
        sim = timed("simulate", lambda: simulate_stage(q, data, limit=limit, store=store, progress=progress))
        return SimulatedRunReport(simulation=sim, quantize=_quantize_section(q, method, budget, seed,
                                                                             cached_stages["quantize"], None),
                                  q_dir=str(q.dir))
    onnx = timed("export", lambda: export_stage(q, fmt=fmt, store=store, progress=progress))
    report = timed("verify", lambda: verify_stage(onnx, data, threads=threads, limit=limit,
                                                  latency_runs=latency_runs, task=fp.meta.task,
                                                  store=store, progress=progress))
    parity = timed("parity", lambda: parity_stage(q, onnx, data, n_images=parity_images, store=store)) \
        if parity_images else None
    qlog = read_json(q.dir / "quant.json")
    warnings_ = list(report.warnings)
    if qlog.get("unknown_ops"):
        from .graph.ops import format_counts
        warnings_.append(f"ops with no quantized form ran in float between DequantizeLinear and QuantizeLinear: "
                         f"{format_counts(qlog['unknown_ops'])} (--strict refuses them)")
    quantize = _quantize_section(q, method, budget, seed, cached_stages["quantize"], mp)
    artifacts = Artifacts(fp=str(fp.dir), q=str(q.dir), onnx=str(onnx.dir), qdq=str(onnx.qdq_path),
                          fp32=str(onnx.fp32_path))
    return RunReport(verify=dataclasses.replace(report, warnings=tuple(warnings_)), quantize=quantize,
                     parity=parity, artifacts=artifacts)


def _quantize_section(q: QArtifact, method: str, budget: str, seed: int, cached: bool, mp: MPArtifact | None):
    """The run report's ``quantize`` section, from the quantize run's ``quant.json``."""
    from .reports import QuantizeSection, Recipe
    qlog = read_json(q.dir / "quant.json")
    return QuantizeSection(
        method=method, budget=budget, recipe=Recipe.from_dict(qlog["recipe"]) if qlog.get("recipe") else None,
        cached=cached, scheme=q.scheme.to_dict(), seed=seed, wall_s=qlog.get("wall_s"),
        method_s=qlog.get("method_s"), reused=qlog.get("reused", {}), device=qlog.get("device"),
        float_ops=qlog.get("float_ops", {}), unknown_ops=qlog.get("unknown_ops", {}),
        mixed_precision=None if mp is None else mp.plan,
        reconstruct=qlog.get("method_config", {}).get("reconstruct"),
        bias_correction=qlog.get("method_config", {}).get("bias_correction"))
