"""Fitting a state_dict to a zoo architecture: unwrapping training-script checkpoints, stripping
``module.`` / ``_orig_mod.`` prefixes, and a mismatch report (missing / unexpected / mis-shaped
keys, and which zoo architectures the keys would fit) when it does not fit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..core.errors import InputFileError, ModelMismatchError, first_line
from .registry import ArchSpec, get_arch, list_archs

__all__ = ["STATE_DICT_KEYS", "STRIP_PREFIXES", "build_fitting", "state_dict_from", "unwrap"]

#: wrapper keys under which training scripts commonly store the weights
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
#: prefixes added by DataParallel / DistributedDataParallel and torch.compile
STRIP_PREFIXES = ("module.", "_orig_mod.")
#: keys listed per kind in a mismatch message
_LIST_MAX = 5


def unwrap(obj: Mapping):
    """The value under a known wrapper key (``state_dict``, ``model``, ...), else ``obj``."""
    for key in STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
            return obj[key]
    return obj


def state_dict_from(obj: Mapping, path: Path) -> dict[str, torch.Tensor]:
    """The weight tensors of a loaded checkpoint dict (unwrapped, prefixes stripped, on the CPU).

    Raises:
        InputFileError: the dict holds no tensors (``path`` names the file in the message).
    """
    inner = unwrap(obj)
    tensors = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise InputFileError(
            f"{path} holds a dict without weight tensors (keys: {keys})",
            f"expected a state_dict, or one under one of the keys {', '.join(STATE_DICT_KEYS)}",
        )
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return {k: v.to("cpu") for k, v in tensors.items()}


def _classifier_key(model: nn.Module) -> str | None:
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return None if last is None else f"{last}.weight"


def _key_diff(model: nn.Module, sd: Mapping[str, torch.Tensor]):
    """(missing, unexpected, misshaped) against the model's state_dict.

    ``num_batches_tracked`` may be missing (BatchNorm fills it in; old checkpoints lack it).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    misshaped = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    return own, missing, unexpected, misshaped


def _shape(t: torch.Tensor) -> str:
    return "(" + ",".join(map(str, t.shape)) + ")"


def _listing(keys: list[str], fmt) -> str:
    shown = ", ".join(fmt(k) for k in keys[:_LIST_MAX])
    more = f", … {len(keys) - _LIST_MAX} more" if len(keys) > _LIST_MAX else ""
    return f"[{shown}{more}]"


@functools.lru_cache(maxsize=None)


def _arch_keys(name: str, in_channels: int) -> frozenset[str]:
    own = get_arch(name).build(in_channels=in_channels).state_dict()
    return frozenset(k for k in own if not k.endswith("num_batches_tracked"))


def _fitting_archs(sd: Mapping[str, torch.Tensor], in_channels: int) -> list[str]:
    """Zoo archs whose key set equals the checkpoint's (for the mismatch hint)."""
    keys = {k for k in sd if not k.endswith("num_batches_tracked")}
    found = []
    for name in list_archs():
        try:
            if _arch_keys(name, in_channels) == keys:
                found.append(name)
        except Exception:  # noqa: BLE001 - a hint only
            continue
    return found


def build_fitting(spec: ArchSpec, sd: Mapping[str, torch.Tensor], num_classes: int | None,
                   in_channels: int) -> nn.Module:
    """Build ``spec`` (its classifier sized from ``sd`` when ``num_classes`` is None) and load ``sd``.

    Raises:
        ModelMismatchError: missing / unexpected / mis-shaped keys (up to five of each listed,
            with the zoo architectures whose keys the file does fit as the hint).
    """
    model = spec.build(num_classes=num_classes, in_channels=in_channels)
    if num_classes is None:
        key = _classifier_key(model)
        if key is not None and key in sd and sd[key].dim() == 2:
            n = int(sd[key].shape[0])
            if n != spec.num_classes and n >= 1:
                model = spec.build(num_classes=n, in_channels=in_channels)
    own, missing, unexpected, misshaped = _key_diff(model, sd)
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing " + _listing(missing, lambda k: f"{k} {_shape(own[k])}"))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected " + _listing(unexpected, lambda k: f"{k} {_shape(sd[k])}"))
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped " + _listing(
                misshaped, lambda k: f"{k} file {_shape(sd[k])} vs model {_shape(own[k])}"))
        fits = [a for a in _fitting_archs(sd, in_channels) if a != spec.name]
        hint = (f"the file's keys match --arch {' or '.join(fits)}" if fits else
                f"check --arch (known: {', '.join(list_archs())}), --num-classes and the input channels")
        raise ModelMismatchError(
            f"state_dict does not fit --arch {spec.name}: " + "; ".join(parts), hint
        )
    try:
        model.load_state_dict(dict(sd), strict=True)
    except Exception as e:
        raise ModelMismatchError(
            f"state_dict does not fit --arch {spec.name}: {first_line(e)}"
        ) from None
    return model
