"""Architecture registry: zoo names → builders plus the input each expects.

A zoo module registers a builder with :func:`register_arch` (the pattern of
timm's ``register_model``); the loader looks it up by the ``--arch`` name with
:func:`get_arch`. Registration happens when ``toolchain.models`` is imported.

Example::

    @register_arch("tinynet", input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), num_classes=10)
    def tinynet(num_classes: int, in_channels: int) -> nn.Module: ...

    spec = get_arch("tinynet")
    model = spec.build()                     # default classes and channels
    meta = spec.default_meta(num_classes=4)  # a ModelMeta with overrides
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from ..core.errors import ConfigError
from ..core.meta import ModelMeta

#: ``builder(num_classes, in_channels) -> torch.nn.Module``
Builder = Callable[[int, int], "object"]

_REGISTRY: dict[str, "ArchSpec"] = {}


@dataclass(frozen=True)
class ArchSpec:
    """One zoo architecture: how to build it and what input it expects by default.

    Attributes:
        name: the ``--arch`` name.
        builder: ``builder(num_classes: int, in_channels: int) -> nn.Module``; returns a
            freshly initialised model in training mode whose state_dict keys follow
            the layout of the published checkpoints for this architecture.
        input_shape: default (C, H, W) of one preprocessed image.
        mean, std: default per-channel normalization of [0, 1] pixel values.
        num_classes: default number of logits.
        resize: default shorter-side resize before the centre crop, or None.
        description: first line of the builder's docstring (for listings).
    """

    name: str
    builder: Builder
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    resize: int | None = None
    description: str = ""

    def build(self, num_classes: int | None = None, in_channels: int | None = None):
        """Build the model (``torch.nn.Module``), with the defaults for omitted arguments."""
        return self.builder(
            num_classes=self.num_classes if num_classes is None else int(num_classes),
            in_channels=self.input_shape[0] if in_channels is None else int(in_channels),
        )

    def default_meta(self, **overrides) -> ModelMeta:
        """A :class:`ModelMeta` with this arch's defaults; ``None`` overrides are ignored.

        Raises:
            ConfigError: an override is invalid (see :class:`ModelMeta`).
        """
        fields = dict(
            input_shape=self.input_shape,
            mean=self.mean,
            std=self.std,
            num_classes=self.num_classes,
            resize=self.resize,
            arch=self.name,
        )
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return ModelMeta(**fields)


def register_arch(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    resize: int | None = None,
):
    """Decorator registering ``builder(num_classes, in_channels) -> nn.Module`` as ``name``.

    Returns the builder unchanged. The defaults are validated through
    :class:`ModelMeta` at registration time.

    Raises:
        ValueError: ``name`` is already registered (a programming error, not a user one).
    """

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        # normalise through ModelMeta (also checks lengths and positivity)
        m = ModelMeta(input_shape=input_shape, mean=mean, std=std, num_classes=num_classes,
                      resize=resize, arch=name)
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ArchSpec(
            name=name,
            builder=builder,
            input_shape=m.input_shape,
            mean=m.mean,
            std=m.std,
            num_classes=m.num_classes,
            resize=m.resize,
            description=doc[0].strip() if doc else "",
        )
        return builder

    return decorate


def _load_zoo() -> None:
    """Import the zoo modules (registering their archs) on first use; they import torch."""
    from . import cifar_resnet, mobilenet_v2, resnet, tiny  # noqa: F401


def list_archs() -> list[str]:
    """Names of all registered architectures, sorted."""
    _load_zoo()
    return sorted(_REGISTRY)


def _normalise(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "-_ .")


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` registered as ``name``.

    Case, ``-`` and ``_`` are ignored when there is no exact match (``ResNet-20`` → ``resnet20``,
    ``mobilenetv2`` → ``mobilenet_v2``).

    Raises:
        ConfigError: no architecture of that name; the message lists the known ones.
    """
    _load_zoo()
    if name in _REGISTRY:
        return _REGISTRY[name]
    same = [spec for key, spec in _REGISTRY.items() if _normalise(key) == _normalise(name)]
    if len(same) == 1:
        return same[0]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f"did you mean {close[0]!r}?" if close else None
    raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(list_archs())}", hint)
