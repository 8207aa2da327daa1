"""Method registry: ``@register_method("zaq")`` on a :class:`Method` subclass (as timm's register_model).

A method receives the FP teacher and the initialized quantized model through a
:class:`MethodContext` and returns the quantized model. It never sees data files.
Its hyperparameters are a frozen :class:`~.config.Settings` dataclass (``Method.Config``) filled
from a recipe (``recipes/<name>.toml``, one table per budget) and then from ``--set key=value``
overrides by :func:`method_config` (the one way settings reach a method, :mod:`.config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import fx

from ..core.errors import ConfigError
from .config import Rule, Settings, build_config, group, setting
from ..core.meta import ModelMeta
from ..quant.model import QuantizedModel
from ..quant.scheme import QuantScheme
from .reconstruct import RECONSTRUCTIONS, ReconstructionConfig
from .schedule import RECONSTRUCTION_STEP_COST, Knob, Phase, synthesis_phase, valid_duration

_METHODS: dict[str, type["Method"]] = {}


def register_method(name: str):
    """Class decorator registering a Method subclass under ``name``."""
    def deco(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def get_method(name: str) -> type["Method"]:
    """The Method class registered as ``name``. Raises ConfigError for an unknown name."""
    from . import _load_all  # noqa: F401  (registers the built-in methods)
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}", f"choose one of: {', '.join(list_methods())}")
    return _METHODS[name]


def method_config(name: str, *layers: dict) -> tuple[type["Method"], Settings]:
    """(Method class, its frozen config from ``layers`` of settings), e.g. ``method_config("bnstat",
    load_recipe("bnstat", "cpu"), {"iterations": "50"})``.

    Raises:
        ConfigError: an unknown method; SettingError (a ConfigError) for a bad key or value.
    """
    cls = get_method(name)
    return cls, build_config(cls.Config, *layers, owner=name)


def list_methods() -> list[str]:
    from . import _load_all  # noqa: F401
    return sorted(_METHODS)


@dataclass
class MethodContext:
    """Everything a method may use. No data files: only the FP model and its model card.

    Attributes:
        teacher: the FP model (fx GraphModule of ATen ops), on ``device``; frozen here (eval mode,
            no parameter requires grad). Inserting taps needs a private copy: :meth:`teacher_copy`.
        qmodel: the quantized model (weights initialized, activation ranges unset), on ``device``.
        meta: the model card (input shape, normalization, classes).
        scheme: bit widths.
        device: torch device to compute on.
        seed: the run's seed (already applied to torch's RNGs).
        workdir: a scratch directory for checkpoints (kept on failure, for resume).
        progress: ``progress(description, total) -> task`` with ``task.advance(n=1, **fields)``
            and ``task.close()``; a no-op by default.
        cached: ``cached(kind, key: dict, build: () -> Tensor) -> Tensor`` — a shared, content-keyed
            artifact (e.g. a synthetic calibration set) other methods/runs may reuse.
        log: the method's log, written to ``log.json`` (losses per step, timings, notes).
    """

    teacher: torch.nn.Module
    qmodel: QuantizedModel
    meta: ModelMeta
    scheme: QuantScheme
    device: torch.device
    seed: int = 0
    workdir: Path | None = None
    progress: Callable = None
    cached: Callable = None
    log: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.progress is None:
            self.progress = lambda description, total=None: _NullTask()
        if self.cached is None:
            self.cached = lambda kind, key, build: build()
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def teacher_copy(self) -> torch.nn.Module:
        """A private copy of the frozen teacher (an fx GraphModule, eval mode, on ``device``) that a
        method may insert taps into without touching :attr:`teacher`."""
        from ..quant.rewrite import fp_graph_module
        return fp_graph_module(self.teacher).to(self.device).eval()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.meta.input_shape


class _NullTask:
    def advance(self, n: int = 1, **fields):
        pass

    def close(self):
        pass


class Method:
    """Base class. Subclasses set ``Config`` (frozen dataclass) and implement :meth:`run`."""

    name: ClassVar[str] = ""
    #: whether the method reads BN statistics of the FP model (checked before running)
    needs_batchnorm: ClassVar[bool] = False
    #: whether its losses read (N, num_classes) class logits (distillation, class-conditional
    #: generators): such a method does not take a segmentation model's per-pixel output
    needs_class_logits: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config(Settings):
        """Settings every method has.

        Attributes:
            reconstruct: the step the method ends with, a key of
                :data:`~.reconstruct.RECONSTRUCTIONS`: "none", or "adaround" (block reconstruction
                on synthetic images, BRECQ/AdaRound).
            recon: its settings (:class:`~.reconstruct.ReconstructionConfig`).
            bias_correction: after the method (before reconstruction, when on), subtract each
                layer's mean output shift from its bias, measured on the synthetic images
                (:mod:`toolchain.quant.bias_correction`; Nagel et al. 2019 sec. 4.2).
            time_budget: fit the schedule into this long (``15m``, ``1h``, ``90s``; "none": run the
                recipe as it is): the long phases (:meth:`Method.phases`) are estimated from a timed
                pass of the FP model and their settings lowered to fit (:mod:`.schedule`).
        """

        reconstruct: str = setting("none", choices=tuple(RECONSTRUCTIONS))
        recon: ReconstructionConfig = group(ReconstructionConfig)
        bias_correction: bool = setting(False)
        time_budget: str = setting("none")

        rules = (Rule("time_budget", lambda c: valid_duration(c.time_budget),
                      "must look like 15m, 1h30m, 90s, a number of seconds, or none"),)

    def __init__(self, config=None, costs: dict[str, float] | None = None):
        self.config = config if config is not None else self.Config()
        #: per-image costs of this method's steps an FP pass does not predict, in FP-pass units,
        #: measured by :meth:`probe_costs` before the schedule is fitted (empty: not measured)
        self.costs: dict[str, float] = dict(costs or {})
        #: (N, C, H, W) float32 synthetic images :meth:`run` calibrated on, if it synthesized them
        self.calibration_images: torch.Tensor | None = None

    @property
    def needs_synthetic_images(self) -> bool:
        """Whether this configuration reads BN statistics (the method's own need, or a post-step —
        reconstruction, bias correction — on a ZeroQ set); checked before running."""
        return self.needs_batchnorm or self.needs_post_images

    @property
    def needs_post_images(self) -> bool:
        """Whether a step after :meth:`run` (reconstruction, bias correction) runs on synthetic images."""
        return self.config.reconstruct != "none" or self.config.bias_correction

    #: whether :meth:`run` sets :attr:`calibration_images` (then reconstruction needs no set of its own)
    synthesizes_calibration_images: ClassVar[bool] = False

    def run(self, ctx: MethodContext) -> QuantizedModel:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def probe_costs(cls, teacher: fx.GraphModule, input_shape: tuple[int, ...], device: torch.device,
                    pass_s: float) -> dict[str, float]:
        """Time, on this machine, the parts of this method's steps whose cost does not scale like one
        FP pass (:mod:`.schedule`), before the schedule is fitted; :meth:`phases` reads them from
        :attr:`costs`.

        Args:
            teacher: the FP GraphModule (shape metadata on its nodes).
            input_shape: (C, H, W) of one input.
            device: where the method runs.
            pass_s: seconds of one FP forward+backward per image (:func:`~.schedule.probe_pass_seconds`).

        Returns:
            name → FP-pass units per image: ``bn_synthesis`` (one BN-statistics step,
            :func:`~.bn_stats.probe_bn_step_units`; read by :attr:`synthesis_cost`) when the model
            has BatchNorm, and a method's own costs in overrides.
        """
        from .bn_stats import probe_bn_step_costs
        return probe_bn_step_costs(teacher, input_shape, device, pass_s)

    @property
    def synthesis_cost(self) -> float:
        """FP-pass units per image of a BN-statistics synthesis step: the probed ``bn_synthesis``
        (:meth:`probe_costs`), 1 before a probe."""
        from .bn_stats import bn_step_cost
        return bn_step_cost(self.costs)

    def phases(self, scheme: QuantScheme, is_cached: Callable[[str, dict], bool]) -> list[Phase]:
        """The long work of this configuration, for the time budget (:mod:`.schedule`): a method adds
        its own phases before these (the reconstruction's, when on).

        Args:
            scheme: the bit widths the run quantizes to.
            is_cached: ``is_cached(kind, key)``: whether the artifact :attr:`MethodContext.cached` would
                build for ``(kind, key)`` is already stored.
        """
        if not self.needs_post_images:
            return []
        r = self.config.recon
        out = []
        if not self.synthesizes_calibration_images:
            from .synthesis import SynthesisConfig
            s = SynthesisConfig(num_images=r.images)
            out.append(dataclasses.replace(synthesis_phase("reconstruction set", s, is_cached("synth", dataclasses.asdict(s)),
                                                           self.synthesis_cost),
                                           knobs=(Knob("recon.images", min(32, r.images), 8),)))
        if self.config.reconstruct != "none":
            # a step trains one block; over all blocks a step costs RECONSTRUCTION_STEP_COST FP passes an image
            out.append(Phase("reconstruction", r.steps, r.batch, RECONSTRUCTION_STEP_COST,
                             (Knob("recon.steps", min(100, r.steps), 50),)))
        return out

    def quantize(self, ctx: MethodContext) -> QuantizedModel:
        """:meth:`run`, then the configured post-steps on the synthetic images: bias correction, then
        reconstruction (their records in ``ctx.log``). Not the other way round: reconstruction
        fits a block's layers to each other, and correcting each layer's mean afterwards undoes that."""
        qmodel = self.run(ctx)
        if not self.needs_post_images:
            return qmodel
        from ..quant.rewrite import quantize_graph
        images = self.reconstruction_images(ctx).to(ctx.device)
        reference = quantize_graph(ctx.teacher, ctx.scheme).to(ctx.device)  # the FP model, same layers
        if self.config.bias_correction:
            from ..quant.bias_correction import correct_biases
            log = correct_biases(qmodel, images, reference=reference, batch=self.config.recon.batch,
                                 progress=ctx.progress)
            ctx.log["bias_correction"] = log.to_dict()
        step = RECONSTRUCTIONS[self.config.reconstruct]
        if step is not None:
            from .checkpoint import Checkpointer
            ckpt = Checkpointer(ctx.workdir, "reconstruct.ckpt", dataclasses.asdict(self.config))
            log = step(qmodel, images, self.config.recon, reference=reference, progress=ctx.progress,
                       checkpointer=ckpt)
            ctx.log["reconstruction"] = log.to_dict()
        return qmodel

    def reconstruction_images(self, ctx: MethodContext) -> torch.Tensor:
        """The (N, C, H, W) float32 images the post-steps run on: the synthetic images the method
        calibrated on (:attr:`calibration_images`, set by :meth:`run`: bnstat's ZeroQ set, GZNQ's
        draws), else a cached ZeroQ set of ``recon.images`` images (:func:`~.bnstat.synthetic_set`)."""
        if self.calibration_images is not None:
            return self.calibration_images
        from .bnstat import synthetic_set
        from .synthesis import SynthesisConfig
        return synthetic_set(ctx, SynthesisConfig(num_images=self.config.recon.images))
