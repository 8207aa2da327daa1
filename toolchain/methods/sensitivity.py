"""Data-free mixed precision: how much each layer's output error grows at each weight width, measured
on the synthetic set, and the widths a size budget allows (``--size-budget F``).

1. Sensitivity (ZeroQ, Cai et al., CVPR 2020, sec. 3.2, eq. 4; AIMET's AMP phase 1): for each
   Conv/Linear layer ``l`` and candidate width ``b`` (``mp.candidates``, default 8, 6, 4), only
   ``l``'s weights are quantized at ``b`` (every other weight and every activation in float) and
   ``Ω_l(b)`` is the mean output error against the FP model on the first ``mp.images`` images of the
   ZeroQ synthetic set (:func:`~.bnstat.synthetic_set`, shared with ``bnstat``): ``kl`` (default,
   ZeroQ's) the KL divergence of the FP model's softmax to the quantized one's, per image (per pixel
   for a segmentation output), or ``mse`` of the outputs. Weight-only: activations stay at the
   scheme's ``abits``. A candidate that saves no byte over a wider one under the size model (6 bits
   in the ``int4`` file, which stores 5..8-bit codes a byte each) is not measured.
2. Allocation (:func:`toolchain.quant.allocate.allocate`, HAWQ-V3's integer program solved exactly):
   one width per layer minimising ``Σ_l Ω_l(b_l)`` with the model's bytes (:mod:`toolchain.quant.size`)
   at most ``F`` × the all-8-bit model's. :func:`plan` returns the widths and the scheme that asks for
   them (``QuantScheme.layer_wbits``); the chosen method then quantizes on that scheme as on any other.

Settings (``--set mp.KEY=VALUE``, :class:`MixedPrecisionConfig`): ``candidates``, ``metric``,
``size_model``, ``images``, ``batch_size``, ``first_last`` and the ``synthesis`` group — the method's
own when it is bnstat's ZeroQ set, else bnstat's recipe table for the run's budget (cpu / paper).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..quant.allocate import Option, allocate, check_size_budget
from ..quant.scheme import MAX_BITS, MIN_BITS, QuantScheme
from ..quant.size import DEFAULT_SIZE_MODEL, SIZE_MODELS, SizeModel, get_size_model
from ..reports import LayerWidth, MixedPrecisionPlan
from ..targets import is_depthwise
from .checkpoint import Checkpointer
from .config import Rule, Settings, build_config, group, setting
from .synthesis import SynthesisConfig

#: ``--set`` keys with this prefix are mixed-precision settings, not the method's
MP_PREFIX = "mp."


# --------------------------------------------------------------------------- metrics
def _kl(fp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(fp) ‖ softmax(q)) over dim 1, averaged over any further dims: (N,) nats."""
    lp, lq = F.log_softmax(fp.double(), dim=1), F.log_softmax(q.double(), dim=1)
    kl = (lp.exp() * (lp - lq)).sum(dim=1)
    return kl.reshape(kl.shape[0], -1).mean(dim=1)


def _mse(fp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the outputs per image: (N,)."""
    d = (q.double() - fp.double()) ** 2
    return d.reshape(d.shape[0], -1).mean(dim=1)


#: metric name → (FP output, quantized output), each (N, K, ...) → (N,) error per image
METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"kl": _kl, "mse": _mse}


# --------------------------------------------------------------------------- settings
def parse_candidates(text: str) -> tuple[int, ...]:
    """``"8,6,4"`` → ``(8, 6, 4)``: distinct widths in ``MIN_BITS..MAX_BITS``, widest first.

    Raises:
        ConfigError: not comma-separated integers in range, or none.
    """
    try:
        bits = sorted({int(t) for t in str(text).replace(" ", "").split(",") if t}, reverse=True)
    except ValueError:
        bits = []
    if not bits or not all(MIN_BITS <= b <= MAX_BITS for b in bits):
        raise ConfigError(f"mp.candidates must be comma-separated widths in {MIN_BITS}..{MAX_BITS}, got {text!r}",
                          "e.g. --set mp.candidates=8,6,4")
    return tuple(bits)


def _candidates_ok(c) -> bool:
    try:
        parse_candidates(c.candidates)
    except ConfigError:
        return False
    return True


@dataclass(frozen=True)
class MixedPrecisionConfig(Settings):
    """How mixed precision measures and counts (``--set mp.KEY=VALUE``).

    Attributes:
        candidates: the weight widths a layer may get, comma-separated (``"8,6,4"``).
        metric: the output error, ``kl`` (ZeroQ's) or ``mse`` (:data:`METRICS`).
        size_model: how bytes are counted (:data:`toolchain.quant.size.SIZE_MODELS`): ``int4`` (the
            int4 ONNX file's bytes, the file a --size-budget run exports) or ``packed`` (b/8 bytes a code).
        images: synthetic images the sensitivities are measured on (the first of the set).
        batch_size: images per forward pass while measuring.
        first_last: allocate the first and last Conv/Linear layers too (else they keep
            ``--first-last-bits`` and their bytes are fixed). On (default): on ImageNet models the
            classifier holds a third of the weights (MobileNetV2: 1.28 M of 3.47 M).
        synthesis: the ZeroQ synthetic set (:class:`~.synthesis.SynthesisConfig`).
    """

    candidates: str = setting("8,6,4")
    metric: str = setting("kl", choices=tuple(METRICS))
    size_model: str = setting(DEFAULT_SIZE_MODEL, choices=tuple(SIZE_MODELS))
    images: int = setting(64, ge=1)
    batch_size: int = setting(32, ge=1)
    first_last: bool = True
    synthesis: SynthesisConfig = group(SynthesisConfig)

    rules = (Rule("candidates", _candidates_ok,
                  f"must be comma-separated widths in {MIN_BITS}..{MAX_BITS}, e.g. 8,6,4"),)

    @property
    def widths(self) -> tuple[int, ...]:
        """The candidate widths, widest first."""
        return parse_candidates(self.candidates)


def split_overrides(overrides: dict | None) -> tuple[dict, dict]:
    """``--set`` values → (the method's, the mixed-precision ones with the ``mp.`` prefix removed)."""
    method, mp = {}, {}
    for k, v in (overrides or {}).items():
        (mp if k.startswith(MP_PREFIX) else method)[k[len(MP_PREFIX):] if k.startswith(MP_PREFIX) else k] = v
    return method, mp


def mixed_precision_config(method_cfg, budget: str = "cpu", mp_overrides: dict | None = None) -> MixedPrecisionConfig:
    """The mixed-precision settings of a run: the synthetic set of ``method_cfg`` (a method's config)
    when it is bnstat's ZeroQ set (:class:`~.synthesis.SynthesisConfig` itself, so both share one
    cached set), else bnstat's recipe ``[budget]`` table's; then ``mp_overrides`` (``--set mp.…``).

    Raises:
        ConfigError: a bad ``mp.`` key or value (SettingError), no bnstat recipe for ``budget``.
    """
    synth = getattr(method_cfg, "synthesis", None)
    if type(synth) is SynthesisConfig:
        base = dataclasses.asdict(synth)
    else:
        from .recipes import load_recipe
        from .registry import method_config
        base = dataclasses.asdict(method_config("bnstat", load_recipe("bnstat", budget))[1].synthesis)
    return build_config(MixedPrecisionConfig, {"synthesis": base}, mp_overrides or {}, owner="mp")


def measured_widths(candidates: Sequence[int], size_model: SizeModel) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(widths to measure, widths skipped): a width is skipped when a wider candidate counts the same
    bytes under ``size_model`` (it can only be as good at no saving; e.g. 6 next to 8 in the int4 file)."""
    keep, skip = [], []
    for b in sorted(candidates, reverse=True):
        same = any(size_model.code_bytes(n, w) == size_model.code_bytes(n, b) for w in keep for n in (1000, 1001))
        (skip if same else keep).append(b)
    return tuple(keep), tuple(skip)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class LayerSensitivity:
    """One Conv/Linear layer's measurements.

    Attributes:
        name: module path (:meth:`~toolchain.quant.model.QuantizedModel.layers`).
        role: position ("", "first", "last", "first+last").
        weights: number of weight codes.
        channels: output channels.
        base_bits: its weight width on the run's uniform scheme (after the target's rule): what it keeps
            when it is not allocated.
        ref_bits: its width on the all-8-bit scheme (after the target's rule: 7 on ``portable`` for a
            non-depthwise layer on 8-bit inputs).
        allocated: whether the allocation chooses its width (``mp.first_last`` off: edge layers are not).
        bits: its width at each candidate of :attr:`SensitivityResult.candidates` (after the rule);
            empty when not allocated.
        errors: ``Ω(b)`` at each candidate (the metric, mean over images); empty when not allocated.
    """

    name: str
    role: str
    weights: int
    channels: int
    base_bits: int
    ref_bits: int
    allocated: bool
    bits: tuple[int, ...]
    errors: tuple[float, ...]


@dataclass(frozen=True)
class SensitivityResult:
    """Per-layer sensitivities (:func:`measure_sensitivity`; stored as ``mp/<key>/sensitivity.json``).

    Attributes:
        metric: ``kl`` or ``mse``.
        candidates: the widths measured, widest first; ``skipped`` the candidates not measured.
        images: images measured on.
        layers: one :class:`LayerSensitivity` per Conv/Linear layer, graph order (allocated or not).
        wall_s: seconds the measurement took.
    """

    metric: str
    candidates: tuple[int, ...]
    skipped: tuple[int, ...]
    images: int
    layers: tuple[LayerSensitivity, ...]
    wall_s: float

    def to_dict(self) -> dict:
        return {"metric": self.metric, "candidates": list(self.candidates), "skipped": list(self.skipped),
                "images": self.images, "wall_s": self.wall_s,
                "layers": [{**dataclasses.asdict(l), "bits": list(l.bits), "errors": list(l.errors)}
                           for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityResult":
        return cls(metric=d["metric"], candidates=tuple(d["candidates"]), skipped=tuple(d["skipped"]),
                   images=int(d["images"]), wall_s=float(d["wall_s"]),
                   layers=tuple(LayerSensitivity(**{**l, "bits": tuple(l["bits"]), "errors": tuple(l["errors"])})
                                for l in d["layers"]))


# --------------------------------------------------------------------------- measuring
def _all_at(scheme: QuantScheme, names: Sequence[str], bits: int) -> QuantScheme:
    return dataclasses.replace(scheme, layer_wbits=tuple((n, bits) for n in names))


@torch.no_grad()
def measure_sensitivity(program, scheme: QuantScheme, images: torch.Tensor, cfg: MixedPrecisionConfig, *,
                        device=None, progress=None, checkpointer: Checkpointer | None = None) -> SensitivityResult:
    """Each layer's output error with only its weights quantized, at each candidate width.

    Args:
        program: the FP ``ExportedProgram`` (or GraphModule), input (N, C, H, W) float32 → outputs
            (N, K) logits or (N, K, H', W').
        scheme: the run's scheme (abits, first/last bits, target; its ``layer_wbits`` are ignored).
        images: (N, C, H, W) float32, normalized input space; the first ``cfg.images`` are used.
        cfg: candidates, metric, size model, batch size.
        device: where to run (default CPU).
        progress: ``progress(description, total) -> task``; one step per (layer, width).
        checkpointer: saves the errors after every layer; a re-run with the same fingerprint resumes.

    Returns:
        The :class:`SensitivityResult`.

    Raises:
        ConfigError: no image to measure on.
    """
    from ..quant.rewrite import quantize_graph
    t0 = time.perf_counter()
    device = torch.device("cpu") if device is None else device
    x = images[: cfg.images].float()
    if len(x) == 0:
        raise ConfigError("no synthetic image to measure layer sensitivity on", "raise mp.images / synthesis.num_images")
    batches = [x[i:i + cfg.batch_size].to(device) for i in range(0, len(x), cfg.batch_size)]
    measured, skipped = measured_widths(cfg.widths, get_size_model(cfg.size_model))
    base = dataclasses.replace(scheme, layer_wbits=())

    qm = quantize_graph(program, base).eval()
    names = list(qm.layers())
    info = {n: (l.role, l.weight.numel(), l.weight.shape[0], l.weight_quant.bits) for n, l in qm.layers().items()}
    ref_bits = {n: l.weight_quant.bits for n, l in quantize_graph(program, _all_at(base, names, 8)).layers().items()}
    selected = [n for n in names if cfg.first_last or not info[n][0]]
    qm = qm.to(device)
    with qm.float_mode():
        reference = [qm(b) for b in batches]
    metric = METRICS[cfg.metric]

    errors: dict[int, dict[str, float]] = {}
    state = checkpointer.load(restore_random=False) if checkpointer is not None else None
    if state is not None:
        errors = {int(b): dict(e) for b, e in state["errors"].items()}
    bits_at: dict[int, dict[str, int]] = {}
    task = (progress or (lambda d, t=None: _NoTask()))(
        f"measuring layer sensitivity ({len(selected)} layers × widths {','.join(map(str, measured))})",
        len(selected) * len(measured))
    try:
        resumed = sum(len(e) for e in errors.values())
        if resumed:  # (layer, width) pairs a checkpoint already holds
            task.advance(resumed)
        for b in measured:
            qb = quantize_graph(program, _all_at(base, names, b)).to(device).eval()
            qb.set_mode("float")
            layers = qb.layers()
            bits_at[b] = {n: layers[n].weight_quant.bits for n in names}
            done = errors.setdefault(b, {})
            for n in selected:
                if n in done:
                    continue
                layers[n].weight_quant.set_mode("quant")
                total = sum(float(metric(r, qb(xb)).sum()) for r, xb in zip(reference, batches))
                layers[n].weight_quant.set_mode("float")
                done[n] = total / len(x)
                if checkpointer is not None:
                    checkpointer.save({"errors": {str(k): v for k, v in errors.items()}})
                task.advance(1, layer=n, bits=b, error=done[n])
    finally:
        task.close()
    out = tuple(LayerSensitivity(name=n, role=info[n][0], weights=int(info[n][1]), channels=int(info[n][2]),
                                 base_bits=int(info[n][3]), ref_bits=int(ref_bits[n]), allocated=n in selected,
                                 bits=tuple(int(bits_at[b][n]) for b in measured) if n in selected else (),
                                 errors=tuple(float(errors[b][n]) for b in measured) if n in selected else ())
                for n in names)
    return SensitivityResult(metric=cfg.metric, candidates=measured, skipped=skipped, images=len(x), layers=out,
                             wall_s=time.perf_counter() - t0)


class _NoTask:
    def advance(self, n: int = 1, **fields):
        pass

    def close(self):
        pass


# --------------------------------------------------------------------------- allocating
def plan(sens: SensitivityResult, scheme: QuantScheme, size_budget: float, *, size_model: str,
         file_bytes: int) -> tuple[QuantScheme, MixedPrecisionPlan]:
    """The widths that minimise the summed sensitivity within ``size_budget`` × the all-8-bit bytes.

    The bytes are ``fixed + Σ code bytes`` (:mod:`toolchain.quant.size`), ``fixed`` measured on the
    all-8-bit model's file, whose bytes are the reference; layers not allocated count at their
    :attr:`~LayerSensitivity.base_bits`.

    Args:
        sens: the measured sensitivities.
        scheme: the run's scheme (the result keeps its activation widths and target).
        size_budget: F in (0, 1].
        size_model: a :data:`~toolchain.quant.size.SIZE_MODELS` name.
        file_bytes: bytes of the all-8-bit model's file written in the size model's ``file_format``.

    Returns:
        (the scheme with ``layer_wbits`` for the allocated layers, the
        :class:`~toolchain.reports.MixedPrecisionPlan`).

    Raises:
        ConfigError: ``size_budget`` outside (0, 1], or below what the lowest widths allow (the message
            says the least feasible F).
    """
    from ..quant.size import fixed_bytes
    f = check_size_budget(size_budget)
    model = get_size_model(size_model)
    fixed = fixed_bytes(model, file_bytes, [(l.weights, l.ref_bits) for l in sens.layers])
    reference = float(file_bytes)  # the all-8-bit file itself (packed: its 8-bit containers, not b/8 bytes)
    free = [l for l in sens.layers if l.allocated]
    kept = model.estimate(0.0, [(l.weights, l.base_bits) for l in sens.layers if not l.allocated])
    options = [[Option(b, model.code_bytes(l.weights, eff), e) for b, eff, e in zip(sens.candidates, l.bits, l.errors)]
               for l in free]
    lowest = min(sens.candidates) if sens.candidates else MIN_BITS
    smaller = [b for b in range(MIN_BITS, lowest) if model.code_bytes(1000, b) < model.code_bytes(1000, lowest)]
    widths = ",".join(map(str, sorted({*sens.candidates, *sens.skipped, *smaller[-1:]}, reverse=True)))
    more = (f"or add a lower width (e.g. --set mp.candidates={widths})" if smaller else
            f"as no width below {lowest} bits saves bytes in the {model.file_format} file "
            "(--set mp.size_model=packed counts b/8 bytes a code)")
    if any(not l.allocated for l in sens.layers):
        more += "; --set mp.first_last=true allocates the first and last layers too"
    alloc = allocate(options, f * reference, fixed + kept, reference_bytes=reference, infeasible_hint=more)
    chosen = dict(zip((l.name for l in free), alloc.bits))
    layers = []
    for l in sens.layers:
        if l.allocated:
            b = chosen[l.name]
            eff = l.bits[sens.candidates.index(b)]
        else:
            b = eff = l.base_bits
        layers.append(LayerWidth(name=l.name, role=l.role, weights=l.weights, allocated=l.allocated, bits=b,
                                 effective_bits=eff, bytes=model.code_bytes(l.weights, eff), errors=l.errors))
    n_total = max(sum(l.weights for l in layers), 1)
    mp = MixedPrecisionPlan(
        size_budget=f, size_model=model.name, file_format=model.file_format, exported=model.exported,
        reference_bytes=reference, budget_bytes=f * reference, estimated_bytes=alloc.bytes,
        ratio=alloc.bytes / reference, avg_wbits=sum(l.weights * l.effective_bits for l in layers) / n_total,
        error=alloc.error, metric=sens.metric, candidates=sens.candidates, skipped=sens.skipped,
        images=sens.images, layers=tuple(layers))
    return dataclasses.replace(scheme, layer_wbits=tuple(chosen.items())), mp
