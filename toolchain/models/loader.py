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

Every failure a user can cause is a :class:`~toolchain.errors.ZqError` with one
line of message and a hint; no torch/zip/pickle exception escapes.
"""

from __future__ import annotations

import functools
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..artifacts import file_sha256
from ..errors import (
    ConfigError,
    InputFileError,
    ModelMismatchError,
    UnsafeModelError,
    UnsupportedModelError,
    ZqError,
)
from .meta import ModelMeta
from .registry import ArchSpec, get_arch, list_archs

__all__ = [
    "LoadedModel",
    "load_model",
    "export_model",
    "fp_module",
    "has_batchnorm",
    "require_batchnorm",
]

#: wrapper keys under which training scripts commonly store the weights
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
#: prefixes added by DataParallel / DistributedDataParallel and torch.compile
STRIP_PREFIXES = ("module.", "_orig_mod.")
#: aten ops that are a BatchNorm (in export IR and after decompositions)
BATCHNORM_OPS = frozenset({
    "batch_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "_batch_norm_with_update",
    "_batch_norm_no_update",
    "cudnn_batch_norm",
    "miopen_batch_norm",
})
#: batch-norm ops whose 6th argument is ``training``
_BN_WITH_TRAINING_ARG = frozenset({
    "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional", "cudnn_batch_norm", "miopen_batch_norm",
})
_DROPOUT_OPS = frozenset({"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
                          "dropout_", "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_"})
_DISALLOWED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
_TEST_BATCHES = (1, 5)
_LIST_MAX = 5


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
    _check_file(path)
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise InputFileError(f"cannot read {path}: {e.strerror or e}") from None
    kind = _sniff(path)
    if kind == "truncated_zip":
        raise InputFileError(
            f"{path} is a truncated or corrupt zip archive (no central directory)",
            "the download or save did not complete; fetch or save the file again",
        )

    if kind == "pt2":
        program = _load_pt2(path)
        return _finish_pt2(program, spec, input_shape, mean, std, num_classes, digest)
    if kind == "torchscript":
        raise InputFileError(
            f"{path} is a TorchScript archive; TorchScript is not supported",
            "convert it where its code is available: m = torch.jit.load(f); then "
            "torch.save(m.state_dict(), 'w.pth') and pass --arch, or save "
            "torch.export.export(model.eval(), (x,), dynamic_shapes=...) with torch.export.save",
        )

    obj, unpickled = _torch_load(path, trust_pickle)
    if isinstance(obj, Mapping):
        inner = _unwrap(obj)
        if isinstance(inner, nn.Module):
            obj = inner
    if isinstance(obj, torch.jit.ScriptModule):  # pragma: no cover - caught by _sniff
        raise InputFileError(f"{path} holds a TorchScript module; TorchScript is not supported")
    if isinstance(obj, nn.Module):
        return _finish_module(obj, spec, input_shape, mean, std, num_classes, digest)
    if isinstance(obj, Mapping):
        state_dict = _state_dict_from(obj, path)
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


def export_model(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.export.ExportedProgram:
    """Export ``model`` in eval mode with a dynamic batch dimension (the canonical FP form).

    Args:
        model: an ``nn.Module`` taking one (N, C, H, W) float32 tensor.
        input_shape: (C, H, W) of the example input.

    Returns:
        The ``ExportedProgram`` (eval-mode dropout removed); it is checked to run at batch
        sizes 1 and 5. ``model`` is left in eval mode.

    Raises:
        UnsupportedModelError: torch.export fails (first line of torch's message), or the
            exported program does not run at batch 1 and 5.
    """
    return _export(model, input_shape)[0]


def _export(model: nn.Module, input_shape) -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    """(program, its logits on a batch of one zero image)."""
    model = model.eval()
    example = torch.randn(2, *input_shape)
    try:
        with torch.no_grad():
            program = torch.export.export(
                model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
    except Exception as e:  # torch raises many types here (UserError, RuntimeError, ...)
        raise UnsupportedModelError(
            f"torch.export could not trace the model: {_first_line(e)}",
            "the model must be traceable by torch.export with a dynamic batch dimension "
            "(no data-dependent Python control flow, no batch size fixed in view/reshape)",
        ) from None
    _strip_eval_dropout(program)
    return program, _check_runs(program, input_shape)


def fp_module(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """``program.module()`` without the ``_guards_fn`` call, in eval mode.

    The guards call is dropped from the graph (it gets in the way of graph rewrites and
    re-tracing); torch's forward pre-hook still checks the input's C/H/W (any batch size).
    ``.eval()`` is a no-op on the returned module (the program was exported in eval mode);
    ``.train()`` raises ``NotImplementedError``.

    Returns:
        A ``torch.fx.GraphModule``: (N, C, H, W) float32 → (N, num_classes).
    """
    gm = program.module()
    _drop_guards(gm)
    for m in gm.modules():
        m.training = False

    def _eval(self):
        return self

    def _train(self, mode: bool = True):
        if mode:
            raise NotImplementedError("an exported program cannot be put in training mode")
        return self

    gm.eval = _eval.__get__(gm)
    gm.train = _train.__get__(gm)
    return gm


def has_batchnorm(program: torch.export.ExportedProgram | torch.fx.GraphModule) -> bool:
    """True if the graph contains an aten batch-norm op (``batch_norm``, ``_native_batch_norm_legit*``, …)."""
    return any(_op_name(n) in BATCHNORM_OPS for n in program.graph.nodes)


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


# ----------------------------------------------------------------------------- file level


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputFileError(f"model file not found: {path}")
    if path.is_dir():
        raise InputFileError(
            f"{path} is a directory, not a model file",
            "pass the .pt2 / .pth file itself",
        )
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputFileError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise InputFileError(f"{path} is empty (0 bytes)", "the download or save did not complete")


def _sniff(path: Path) -> str:
    """'pt2', 'torchscript', 'zip' (torch.save archive), 'truncated_zip' or 'other'."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if not zipfile.is_zipfile(path):  # also False for a zip without its central directory
            return "truncated_zip" if magic == b"PK\x03\x04" else "other"
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return "truncated_zip"
    base = {n.split("/", 1)[1] if "/" in n else n for n in names}
    # "archive_format": torch >= 2.6; "serialized_exported_program.json": older torch.export.save
    if "archive_format" in base or "serialized_exported_program.json" in base:
        return "pt2"
    if "constants.pkl" in base or any(b.startswith("code/") for b in base):
        return "torchscript"
    return "zip"


def _load_pt2(path: Path) -> torch.export.ExportedProgram:
    try:
        with open(path, "rb") as f:  # a file object: torch.export.load checks the suffix of paths
            program = torch.export.load(f)
    except Exception as e:
        raise InputFileError(
            f"{path} looks like a torch.export archive but could not be read: {_first_line(e)}",
            "re-save it with torch.export.save (same torch version if possible)",
        ) from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise InputFileError(f"{path} does not hold an ExportedProgram")
    return program


def _torch_load(path: Path, trust_pickle: bool):
    """(object, unpickled) from torch.load; weights_only unless a disallowed global needs trust."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as e:
        m = _DISALLOWED_GLOBAL.search(str(e))
        # a pickle cut inside a GLOBAL opcode names a mangled global such as "torch._u."
        if m is None or not all(part.isidentifier() for part in m.group(1).split(".")):
            raise _corrupt(path, e) from None
        what = m.group(1)
    except Exception as e:
        raise _corrupt(path, e) from None
    if not trust_pickle:
        raise UnsafeModelError(
            f"{path} contains pickled Python objects (first: {what}); loading it would run code from the file",
            "pass --trust-pickle only if you trust the file; better, save a state_dict "
            "(torch.save(model.state_dict(), f)) or a torch.export archive (.pt2) instead",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False), True
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise InputFileError(
            f"cannot unpickle {path}: {_first_line(e)}",
            "the model's class must be importable here; or save a state_dict or a .pt2 instead",
        ) from None
    except Exception as e:
        raise _corrupt(path, e) from None


def _corrupt(path: Path, e: BaseException) -> InputFileError:
    msg = _first_line(e)
    if isinstance(e, EOFError) or "central directory" in msg or "not a ZIP" in msg:
        what = "is truncated or corrupt"
    elif isinstance(e, pickle.UnpicklingError):
        what = "is not a PyTorch model file (or is corrupt)"
    else:
        what = f"could not be read by torch.load ({type(e).__name__}: {msg[:160]})"
    return InputFileError(
        f"{path} {what}",
        "expected a torch.export archive (.pt2), a state_dict (.pt/.pth/.th) or a pickled nn.Module",
    )


# ----------------------------------------------------------------------------- state_dict


def _unwrap(obj: Mapping):
    """The value under a known wrapper key (``state_dict``, ``model``, ...), else ``obj``."""
    for key in STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
            return obj[key]
    return obj


def _state_dict_from(obj: Mapping, path: Path) -> dict[str, torch.Tensor]:
    inner = _unwrap(obj)
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


def _build_fitting(spec: ArchSpec, sd: Mapping[str, torch.Tensor], num_classes: int | None,
                   in_channels: int) -> nn.Module:
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
            f"state_dict does not fit --arch {spec.name}: {_first_line(e)}"
        ) from None
    return model


def _finish_state_dict(sd, spec: ArchSpec, input_shape, mean, std, num_classes, digest) -> LoadedModel:
    # validate the options before the (slower) build and export
    meta = spec.default_meta(input_shape=input_shape, mean=mean, std=std, num_classes=num_classes,
                             source_sha256=digest, source_format="state_dict")
    model = _build_fitting(spec, sd, num_classes, meta.input_shape[0])
    program, logits = _export(model, meta.input_shape)
    fields = {k: getattr(meta, k) for k in ("input_shape", "mean", "std", "resize", "arch",
                                             "source_sha256", "source_format")}
    fields["num_classes"] = num_classes  # None: as many as the checkpoint's classifier gives
    return LoadedModel(program, _meta_from_logits(fields, {}, logits))


# ----------------------------------------------------------------------------- pickle, pt2


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
    program, logits = _export(model, tuple(fields["input_shape"]))
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
    _check_eval_mode(program)
    _strip_eval_dropout(program)
    if isinstance(dims[0], int):
        program, logits, freed = _dynamic_batch_from_static(program, int(dims[0]), fields["input_shape"])
        extra["batch_made_dynamic"] = True
        extra["exported_batch"] = int(dims[0])
        extra["batch_literals_freed"] = freed
    else:
        logits = _check_runs(program, fields["input_shape"])
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


def _check_eval_mode(program) -> None:
    """Raise if a BatchNorm or dropout op in the graph runs in training mode."""
    for n in program.graph.nodes:
        name = _op_name(n)
        if name in _BN_WITH_TRAINING_ARG:
            # the no_stats overload has no running statistics: it always uses batch statistics
            training = n.target._overloadname == "no_stats" or (
                len(n.args) > 5 and n.args[5] is not False)
        elif name in _DROPOUT_OPS:
            training = len(n.args) > 2 and n.args[2] is not False
        else:
            training = name == "_batch_norm_with_update"
        if training:
            raise UnsupportedModelError(
                f"the program was exported in training mode ({n.target})",
                "export model.eval(): torch.export.export(model.eval(), (x,), dynamic_shapes=...)",
            )


def _dynamic_batch_from_static(program, batch: int, input_shape):
    """Re-trace a static-batch program's own aten graph with a dynamic batch, if it allows.

    No user code runs: the graph is the program's. Succeeds when no op hard-codes the batch
    size (e.g. ``flatten`` instead of ``view(B, -1)``); the result is checked against the
    original program image by image. A literal batch size in a view/reshape shape (the channel
    shuffle of ShuffleNet exported at batch 1) is first replaced by the input's batch size
    (:func:`_free_batch_literals`). Returns (program, logits at batch 1, literals replaced).
    """
    gm = program.module()
    _drop_guards(gm)
    gm.validate_inputs = False  # the pre-hook would reject batch != the static size
    freed = _free_batch_literals(gm, batch)
    hint = ("export with a dynamic batch dimension: torch.export.export(model.eval(), (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},)) and torch.export.save it")
    try:
        example = torch.randn(2 if batch != 2 else 3, *input_shape)
        with torch.no_grad():
            new = torch.export.export(gm, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        logits = _check_runs(new, input_shape)
        x = torch.randn(max(_TEST_BATCHES), *input_shape)
        got = _run(new.module(), x)
        old = program.module()
        ref = torch.cat([_run(old, x[i:i + 1].expand(batch, *input_shape))[:1] for i in range(len(x))])
        if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
            raise RuntimeError("re-traced program disagrees with the original")
    except Exception as e:
        raise UnsupportedModelError(
            f"the program's batch dimension is fixed to {batch} and could not be made dynamic "
            f"({_first_line(e)[:120]})",
            hint,
        ) from None
    return new, logits, freed


#: ops whose shape argument may spell the batch size as a literal (``view(1, 2, 24, 28, 28)``)
_SHAPE_OPS = ("view", "reshape", "_unsafe_view")


def _free_batch_literals(gm: torch.fx.GraphModule, batch: int) -> int:
    """Replace a literal batch size in view/reshape shapes by the input's own batch size.

    ``view(x, [1, 2, 24, 28, 28])`` on an x of batch 1 becomes ``view(x, [-1, 2, 24, 28, 28])``
    (or ``[x.size(0), …]`` when the shape already has a −1) — only where the view keeps dim 0
    as the batch (the other dims hold exactly x's other elements). Returns the number rewritten.
    """
    count = 0
    for n in list(gm.graph.nodes):
        if _op_name(n) not in _SHAPE_OPS or len(n.args) < 2 or not isinstance(n.args[0], torch.fx.Node):
            continue
        shape, val = list(n.args[1]), n.args[0].meta.get("val")
        if not shape or shape[0] != batch or not isinstance(val, torch.Tensor) or val.dim() < 1 \
                or val.shape[0] != batch or not all(isinstance(d, int) for d in shape):
            continue
        rest, inner = shape[1:], 1
        for d in val.shape[1:]:
            inner *= int(d)
        if -1 not in rest:
            prod = 1
            for d in rest:
                prod *= d
            if prod != inner:
                continue
            n.args = (n.args[0], [-1, *rest], *n.args[2:])
        else:
            with gm.graph.inserting_before(n):
                size = gm.graph.call_function(torch.ops.aten.sym_size.int, (n.args[0], 0))
            n.args = (n.args[0], [size, *rest], *n.args[2:])
        count += 1
    if count:
        gm.recompile()
    return count


# ----------------------------------------------------------------------------- graph helpers


def _op_name(node: torch.fx.Node) -> str | None:
    if node.op != "call_function":
        return None
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::", 1)[-1]
    return None


def _drop_guards(gm: torch.fx.GraphModule) -> None:
    """Remove ``_guards_fn`` call_module nodes (torch ≥ 2.9 adds one) and the submodule.

    Without the submodule, torch's forward pre-hook checks the input shapes against the
    program's range constraints instead (a clear error for a wrong C/H/W).
    """
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":
            gm.graph.erase_node(n)
    if hasattr(gm, "_guards_fn"):
        gm.delete_submodule("_guards_fn")
    gm.graph.lint()
    gm.recompile()


def _strip_eval_dropout(program: torch.export.ExportedProgram) -> None:
    """Remove eval-mode (identity) dropout nodes from the program's graph, in place."""
    graph = program.graph_module.graph
    changed = False
    for n in list(graph.nodes):
        if _op_name(n) in _DROPOUT_OPS and len(n.args) > 2 and n.args[2] is False:
            n.replace_all_uses_with(n.args[0])
            graph.erase_node(n)
            changed = True
    if changed:
        program.graph_module.recompile()


def _run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``module`` (a program's ``.module()``) on ``x``; checks they are (N, K)."""
    with torch.no_grad():
        out = module(x)
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4) or out.shape[0] != x.shape[0]:
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UnsupportedModelError(
            f"the model returns {what} for a batch of {x.shape[0]}; expected (N, num_classes) logits "
            "or (N, num_classes, H, W) per-pixel logits",
        )
    return out


def _check_runs(program: torch.export.ExportedProgram, input_shape) -> torch.Tensor:
    """Run ``program.module()`` at batch sizes 1 and 5; returns the batch-1 logits."""
    module = program.module()
    outs = []
    for b in _TEST_BATCHES:
        try:
            outs.append(_run(module, torch.zeros(b, *input_shape)))
        except ZqError:
            raise
        except Exception as e:
            raise UnsupportedModelError(
                f"the exported program fails at batch size {b}: {_first_line(e)}",
                "the batch dimension must be free (avoid view/reshape with a fixed batch size)",
            ) from None
    return outs[0]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__
