"""Stage 1: load a user's model file into the project's canonical FP model.

The canonical FP model is a ``torch.export.ExportedProgram`` traced in eval mode
with a dynamic batch dimension (``Dim("batch")``) and one float32 NCHW input,
returning (N, num_classes) logits; it travels with a :class:`ModelMeta`.

Accepted files (detected by content, not by suffix), in order of preference:

1. a ``torch.export`` archive (``.pt2``): no code runs on load; ``arch`` is optional;
2. a state_dict (``.pt/.pth/.th``, also inside ``{"state_dict"|"model"|"model_state_dict": …}``,
   with or without DataParallel's ``module.`` prefix) plus ``arch`` from the zoo;
3. a pickled ``nn.Module``: only with ``trust_pickle=True``, because unpickling runs
   code from the file.

Every failure a user can cause is a :class:`~toolchain.core.errors.ZqError` with one
line of message and a hint; no torch/zip/pickle exception escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError, InputFileError, UnsupportedModelError
from ..core.keys import file_sha256
from ..core.meta import ModelMeta
from ..graph.fx import strip_eval_dropout
from ..graph.ops import has_batchnorm
from .dynamic_batch import check_eval_mode, check_runs, dynamic_batch_from_static, export_with_logits
from .fitting import build_fitting, state_dict_from, unwrap
from .registry import ArchSpec, get_arch, list_archs
from .sniff import check_file, sniff
from .unpickle import load_pt2, torch_load

__all__ = ["LoadedModel", "load_model", "require_batchnorm"]


@dataclass
class LoadedModel:
    """The canonical FP model and its model card.

    Attributes:
        program: eval-mode ``ExportedProgram``; input (N, C, H, W) float32 with a dynamic
            batch dimension N, output (N, num_classes) float32 logits.
        meta: what the model expects as input (see :class:`ModelMeta`).
    """

    program: torch.export.ExportedProgram
    meta: ModelMeta


# ----------------------------------------------------------------------------- public API


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load a model file (``.pt2``, state_dict or pickled module) as a :class:`LoadedModel`.

    Args:
        path: the model file.
        arch: zoo architecture (see :func:`list_archs`); required for a state_dict, optional
            otherwise (then it only supplies the defaults of the model card).
        input_shape: (C, H, W); default: the arch's, or the ``.pt2`` program's input.
        mean, std: per-channel normalization of [0, 1] pixels; default: the arch's. Without an
            arch (``.pt2`` or pickle) they default to 0 / 1 and ``meta.extra["normalization_given"]``
            is False, so the caller can warn.
        num_classes: number of logits; default: the arch's for a ``.pt2``/pickle, for a state_dict
            the row count of the checkpoint's last classifier weight (else the arch's); otherwise
            read from the program's output.
        trust_pickle: allow unpickling arbitrary Python objects (runs code from the file).

    Returns:
        ``LoadedModel(program, meta)``; ``program.module()`` runs at any batch size ≥ 1.

    Raises:
        InputFileError: missing path, a directory, empty/truncated/corrupt file, TorchScript,
            or a file holding something other than a model.
        ConfigError: unknown ``arch``, a state_dict without ``arch``, bad shape/mean/std/classes.
        ModelMismatchError: the state_dict does not fit ``arch`` (missing/unexpected/mis-shaped keys).
        UnsafeModelError: the file holds pickled Python objects and ``trust_pickle`` is False.
        UnsupportedModelError: the model cannot be exported with a dynamic batch dimension, or is
            not a single-input image classifier.
    """
    path = Path(path).expanduser()
    spec = get_arch(arch) if arch is not None else None
    check_file(path)
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise InputFileError(f"cannot read {path}: {e.strerror or e}") from None
    kind = sniff(path)
    if kind == "truncated_zip":
        raise InputFileError(
            f"{path} is a truncated or corrupt zip archive (no central directory)",
            "the download or save did not complete; fetch or save the file again",
        )

    if kind == "pt2":
        program = load_pt2(path)
        return _finish_pt2(program, spec, input_shape, mean, std, num_classes, digest)
    if kind == "torchscript":
        raise InputFileError(
            f"{path} is a TorchScript archive; TorchScript is not supported",
            "convert it where its code is available: m = torch.jit.load(f); then "
            "torch.save(m.state_dict(), 'w.pth') and pass --arch, or save "
            "torch.export.export(model.eval(), (x,), dynamic_shapes=...) with torch.export.save",
        )

    obj, unpickled = torch_load(path, trust_pickle)
    if isinstance(obj, Mapping):
        inner = unwrap(obj)
        if isinstance(inner, nn.Module):
            obj = inner
    if isinstance(obj, torch.jit.ScriptModule):  # pragma: no cover - caught by sniff
        raise InputFileError(f"{path} holds a TorchScript module; TorchScript is not supported")
    if isinstance(obj, nn.Module):
        return _finish_module(obj, spec, input_shape, mean, std, num_classes, digest)
    if isinstance(obj, Mapping):
        state_dict = state_dict_from(obj, path)
        if spec is None:
            raise ConfigError(
                f"{path} is a state_dict (weights only); name its architecture with --arch",
                f"known architectures: {', '.join(list_archs())}",
            )
        loaded = _finish_state_dict(state_dict, spec, input_shape, mean, std, num_classes, digest)
        if unpickled:
            loaded.meta.extra["unpickled"] = True
        return loaded
    raise InputFileError(
        f"{path} holds a {type(obj).__name__}, not a model",
        "save a torch.export archive (.pt2), a state_dict, or an nn.Module",
    )


def require_batchnorm(program: torch.export.ExportedProgram | torch.fx.GraphModule, method: str,
                      alternatives: tuple[str, ...] = ("minmax",)) -> None:
    """Raise unless the model has a BatchNorm layer whose statistics ``method`` can read.

    Args:
        alternatives: the methods that do not need BN statistics (named in the error).

    Raises:
        UnsupportedModelError: no BatchNorm op in the graph.
    """
    if not has_batchnorm(program):
        names = ", ".join(f"--method {m}" for m in alternatives)
        raise UnsupportedModelError(
            f"method {method} needs BatchNorm statistics and this model has no BatchNorm layer; "
            f"methods that apply: {names}",
            "if the BatchNorms were folded into the convolutions, load the unfolded checkpoint",
        )


# ----------------------------------------------------------------------------- the model card


def _finish_state_dict(sd, spec: ArchSpec, input_shape, mean, std, num_classes, digest) -> LoadedModel:
    # validate the options before the (slower) build and export
    meta = spec.default_meta(input_shape=input_shape, mean=mean, std=std, num_classes=num_classes,
                             source_sha256=digest, source_format="state_dict")
    model = build_fitting(spec, sd, num_classes, meta.input_shape[0])
    program, logits = export_with_logits(model, meta.input_shape)
    fields = {k: getattr(meta, k) for k in ("input_shape", "mean", "std", "resize", "arch",
                                             "source_sha256", "source_format")}
    fields["num_classes"] = num_classes  # None: as many as the checkpoint's classifier gives
    return LoadedModel(program, _meta_from_logits(fields, {}, logits))


def _meta_without_arch(spec, input_shape, mean, std, num_classes, digest, fmt) -> tuple[dict, dict]:
    """ModelMeta fields for a model that did not come from the zoo, and its ``extra``."""
    extra: dict = {}
    if spec is not None:
        base = dict(input_shape=spec.input_shape, mean=spec.mean, std=spec.std,
                    num_classes=spec.num_classes, resize=spec.resize, arch=spec.name)
    else:
        base = dict(input_shape=None, mean=(0.0,), std=(1.0,), num_classes=None)
        if mean is None or std is None:
            extra["normalization_given"] = False
    for k, v in dict(input_shape=input_shape, mean=mean, std=std, num_classes=num_classes).items():
        if v is not None:
            base[k] = v
    base.update(source_sha256=digest, source_format=fmt)
    return base, extra


def _finish_module(model: nn.Module, spec, input_shape, mean, std, num_classes, digest) -> LoadedModel:
    fields, extra = _meta_without_arch(spec, input_shape, mean, std, num_classes, digest, "pickle")
    if fields["input_shape"] is None:
        raise ConfigError(
            "a pickled nn.Module does not record its input shape",
            "pass --input-shape C,H,W (or --arch to use a zoo architecture's defaults)",
        )
    _validate_partial(fields)
    model = model.to("cpu").float().eval()
    program, logits = export_with_logits(model, tuple(fields["input_shape"]))
    return LoadedModel(program, _meta_from_logits(fields, extra, logits))


def _finish_pt2(program, spec, input_shape, mean, std, num_classes, digest) -> LoadedModel:
    fields, extra = _meta_without_arch(spec, input_shape, mean, std, num_classes, digest, "pt2")
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise UnsupportedModelError(
            f"the program takes {len(user_inputs)} inputs; an image classifier takes exactly one",
        )
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 4:
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
        raise UnsupportedModelError(f"the program's input is {shape}, not an (N, C, H, W) image batch")
    if val.dtype != torch.float32:
        raise UnsupportedModelError(f"the program's input is {val.dtype}; expected float32")
    dims = list(val.shape)
    static_chw = [int(d) if isinstance(d, int) else None for d in dims[1:]]
    shown = tuple("?" if d is None else d for d in static_chw)
    if input_shape is not None:
        given = tuple(int(v) for v in input_shape)
        if len(given) != 3 or any(d is not None and d != g for d, g in zip(static_chw, given)):
            raise ConfigError(
                f"--input-shape {given} does not fit the program's input (C,H,W) = {shown}",
                "omit --input-shape to use the program's",
            )
        fields["input_shape"] = given
    elif None not in static_chw:
        fields["input_shape"] = tuple(static_chw)
    elif spec is not None and all(d is None or d == g for d, g in zip(static_chw, spec.input_shape)):
        fields["input_shape"] = spec.input_shape
    else:
        raise ConfigError(
            f"the program's input (C,H,W) = {shown} has dynamic dimensions", "pass --input-shape C,H,W"
        )
    _validate_partial(fields)
    check_eval_mode(program)
    strip_eval_dropout(program)
    if isinstance(dims[0], int):
        program, logits, freed = dynamic_batch_from_static(program, int(dims[0]), fields["input_shape"])
        extra["batch_made_dynamic"] = True
        extra["exported_batch"] = int(dims[0])
        extra["batch_literals_freed"] = freed
    else:
        logits = check_runs(program, fields["input_shape"])
    return LoadedModel(program, _meta_from_logits(fields, extra, logits))


def _validate_partial(fields: dict) -> None:
    """Validate mean/std/shape early (num_classes may still be unknown)."""
    ModelMeta(**{**fields, "num_classes": fields.get("num_classes") or 1})


def _meta_from_logits(fields: dict, extra: dict, logits: torch.Tensor) -> ModelMeta:
    """The ModelMeta, num_classes taken from the (1, K) logits unless given (then checked)."""
    k = int(logits.shape[1])
    if logits.dim() == 4:
        fields = {**fields, "task": "segmentation"}
    if fields.get("num_classes") is None:
        fields = {**fields, "num_classes": k}
    elif int(fields["num_classes"]) != k:
        raise ConfigError(
            f"--num-classes {fields['num_classes']} but the model outputs {k} logits",
            "omit --num-classes to take it from the model",
        )
    return ModelMeta(**fields, extra=extra)
