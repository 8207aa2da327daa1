"""Method registry: ``@register_method("zaq")`` on a :class:`Method` subclass (as timm's register_model).

A method receives the FP teacher and the initialized quantized model through a
:class:`MethodContext` and returns the quantized model. It never sees data files.
Its hyperparameters are a frozen dataclass (``Method.Config``) filled from a recipe
(``recipes/<name>.toml``, one table per budget) and then from ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from ..errors import ConfigError
from ..models.meta import ModelMeta
from ..quant.model import QuantizedModel
from ..quant.scheme import QuantScheme

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


def list_methods() -> list[str]:
    from . import _load_all  # noqa: F401
    return sorted(_METHODS)


def _coerce(value: Any, typ: Any, key: str):
    """Convert a ``--set`` string (or TOML value) to the config field's type."""
    if isinstance(typ, str):  # postponed annotations
        typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ.split("|")[0].strip(), None)
    if typ is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} expects true/false, got {value!r}")
    if typ in (int, float, str) and not isinstance(value, typ):
        try:
            return typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a {typ.__name__}, got {value!r}") from None
    return value


def build_config(config_cls, values: dict) -> Any:
    """Instantiate a method config from a dict, rejecting unknown keys and coercing types."""
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for {config_cls.__qualname__}",
                          f"known: {', '.join(sorted(known))}")
    kw = {k: _coerce(v, known[k].type, k) for k, v in values.items()}
    try:
        return config_cls(**kw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad method setting: {e}") from None


@dataclass
class MethodContext:
    """Everything a method may use. No data files: only the FP model and its model card.

    Attributes:
        teacher: the FP model (fx GraphModule of ATen ops, eval mode, frozen), on ``device``.
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
    class Config:
        pass

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    def run(self, ctx: MethodContext) -> QuantizedModel:  # pragma: no cover - abstract
        raise NotImplementedError
