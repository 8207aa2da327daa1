"""The verify report as typed records: :class:`VerifyReport` and its parts (torch-free).

Every record is a frozen dataclass. ``to_dict()`` gives its JSON form exactly as ``zqtool verify
--json``, ``report.json`` and the device verifier have always written it (the same keys, nesting,
key order and value types: tuples become lists, nested records dicts); ``from_dict()`` reads that
JSON back (cached ``report.json`` files are read through it). A field marked :func:`omitted_if_none`
is a key that only some reports carry (``integer_ops.fallback_reason``, ``segmentation``).

Units: percentages are floats in 0..100, times milliseconds, sizes bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..core.meta import ModelMeta
from .machine import SaturationRisk


def omitted_if_none(default=None):
    """A record field left out of ``to_dict()`` while it is None (a key only some reports have)."""
    return field(default=default, metadata={"omit_none": True})


# --------------------------------------------------------------------------- JSON conversion
def to_json(value: Any) -> Any:
    """The JSON form of a report value: records and other dataclasses → dicts (``to_dict()`` where
    defined), tuples → lists, recursively; anything else as is."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(tp: Any, value: Any) -> Any:
    """``value`` (JSON) read as type ``tp``: ``X | None``, a record or class with ``from_dict``, another
    dataclass, ``tuple[X, ...]``, ``dict[str, X]``, or a plain JSON value (returned as is)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_json(args[0], value) if len(args) == 1 else value
    if isinstance(tp, type) and hasattr(tp, "from_dict"):
        return tp.from_dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp(**{f.name: value[f.name] for f in fields(tp)})
    if origin is tuple:
        return tuple(from_json(typing.get_args(tp)[0], v) for v in value)
    if origin is dict and typing.get_args(tp):
        return {k: from_json(typing.get_args(tp)[1], v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


class Record:
    """Base of the report records (frozen dataclasses): ``to_dict()`` and ``from_dict()``."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: one key per field in field order (``omitted_if_none`` fields only when set)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = to_json(v)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Read a record back from its ``to_dict()`` form. Keys the record does not have are ignored;
        a missing key reads as None where the field may be None (a report from before the key).

        Raises:
            ValueError: ``d`` is not a mapping, or lacks a key the record cannot do without.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
        hints, kw = _hints(cls), {}
        for f in fields(cls):
            if f.name in d:
                kw[f.name] = from_json(hints[f.name], d[f.name])
            elif f.default is MISSING and f.default_factory is MISSING:
                if not _allows_none(hints[f.name]):
                    raise ValueError(f"{cls.__name__}: the report has no {f.name!r}")
                kw[f.name] = None
        return cls(**kw)


# --------------------------------------------------------------------------- the parts
@dataclass(frozen=True)
class Accuracy(Record):
    """Top-1 / top-5 accuracy of one model, % (None: not measured, e.g. no FP32 model, or segmentation)."""

    top1: float | None = None
    top5: float | None = None


@dataclass(frozen=True)
class LatencyStats(Record):
    """Batch-1 latency of one model over ``runs`` timed ``session.run`` calls, ms."""

    p50: float
    p90: float
    mean: float
    min: float
    runs: int


@dataclass(frozen=True)
class Latency(Record):
    """The ``latency_ms`` section: how latency was measured, and each model's (None: not measured)."""

    threads: int
    batch_size: int
    warmup: int
    runs: int
    fp32: LatencyStats | None = None
    quantized: LatencyStats | None = None


@dataclass(frozen=True)
class Sizes(Record):
    """The ``bytes`` section: the model files' sizes (fp32 None without an FP32 model)."""

    fp32: int | None
    quantized: int | None


@dataclass(frozen=True)
class FloatNode(Record):
    """A compute node onnxruntime left in float (its optimized graph's name and op type)."""

    name: str | None
    op_type: str


@dataclass(frozen=True)
class IntegerOps(Record):
    """The ``integer_ops`` section (:func:`~toolchain.verify.inspect_integer_ops`)."""

    conv_total: int
    conv_integer: int
    float_nodes: tuple[FloatNode, ...]
    optimized_op_counts: dict[str, int]
    inspected_level: str
    method: str
    fallback_reason: str | None = omitted_if_none()


@dataclass(frozen=True)
class Machine(Record):
    """The ``machine`` section: the CPU (:class:`~toolchain.verify.machine.CpuInfo`'s fields) and
    whether onnxruntime's int16 pair sums saturate here, as measured (None: not measured)."""

    model: str
    arch: str
    flags: tuple[str, ...]
    source: str
    int16_pair_saturation: bool | None
    native_target: str
    int16_pair_saturation_probed: bool | None = None


@dataclass(frozen=True)
class Saturation(Record):
    """The ``saturation`` section: the integer layers whose codes can saturate an int16 pair sum
    (None: onnx not installed) and whether this CPU computes them exactly (None: unknown)."""

    layers: tuple[SaturationRisk, ...] | None
    exact_here: bool | None


@dataclass(frozen=True)
class Files(Record):
    """The ``files`` section: the quantized and FP32 model paths and the data (a path or an EvalSet's repr)."""

    quantized: str
    fp32: str | None
    data: str


@dataclass(frozen=True)
class Settings(Record):
    """The ``settings`` section: verify's options as used."""

    threads: int
    batch_size: int
    latency_runs: int
    warmup: int
    limit: int | None


@dataclass(frozen=True)
class MaskScores(Record):
    """A segmentation model's pixel accuracy and mIoU against the masks, % (None without masks)."""

    pixel_accuracy: float | None = None
    miou: float | None = None


@dataclass(frozen=True)
class Segmentation(Record):
    """The ``segmentation`` section of a segmentation model's report (see :func:`~toolchain.verify.verify`)."""

    num_classes: int
    output_hw: tuple[int, int] | None
    pixels: int
    pixel_agreement: float | None
    miou_vs_fp32: float | None
    class_iou_vs_fp32: tuple[float | None, ...] | None
    masks: bool
    ignore_index: int
    labelled_pixels: int | None
    fp32: MaskScores
    quantized: MaskScores
    miou_drop: float | None


@dataclass(frozen=True)
class VerifyReport(Record):
    """What :func:`~toolchain.verify.verify` measured; ``to_dict()`` is its documented JSON report.

    Attributes (JSON keys): ``fp32`` / ``quantized`` accuracy; ``agreement_top1`` (% of images, or
    of pixels for segmentation); ``top1_drop`` (points); ``top1_stderr`` (points); ``n_images``;
    ``latency_ms``; ``bytes``; ``integer_ops``; ``ort_version``; ``providers``; ``machine``;
    ``saturation``; ``warnings``; ``meta`` (the model card); ``files``; ``data_fingerprint``;
    ``settings``; ``notes``; ``zqtool_version``; ``wall_s``; ``segmentation`` (only for a
    segmentation model).
    """

    fp32: Accuracy
    quantized: Accuracy
    agreement_top1: float | None
    top1_drop: float | None
    top1_stderr: float | None
    n_images: int
    latency_ms: Latency
    bytes: Sizes
    integer_ops: IntegerOps
    ort_version: str
    providers: tuple[str, ...]
    machine: Machine
    saturation: Saturation
    warnings: tuple[str, ...]
    meta: ModelMeta
    files: Files
    data_fingerprint: str | None
    settings: Settings
    notes: tuple[str, ...]
    zqtool_version: str
    wall_s: float
    segmentation: Segmentation | None = omitted_if_none()
