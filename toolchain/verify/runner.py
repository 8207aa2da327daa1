"""``verify``: evaluate a QDQ ONNX model against its FP32 reference on labelled data (classifiers),
or on images with optional masks (segmentation models)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import onnxruntime as ort

from .. import __version__
from ..data.npz import NpzEvalSet
from ..data.opener import open_eval_set
from ..data.protocol import IGNORE_INDEX, EvalSet, check_batch_size, check_limit
from ..core.errors import ConfigError, InputFileError
from .evaluate import OutputsFn, ProgressFn, evaluate
from .integer_ops import inspect_integer_ops
from .latency import measure_latency
from .machine import cpu_info, probe_int16_pair_saturation, saturation_risks, saturation_warning
from .model_card import read_model_meta
from .results import (Accuracy, Files, IntegerOps, Latency, Machine, Saturation, Segmentation, Settings,
                      Sizes, VerifyReport)
from .segmentation import DenseTally, class_iou
from .session import Classifier

#: the FP32 reference looked for beside the QDQ file when fp_path is not given
DEFAULT_FP_NAME = "model.fp32.onnx"
_CARD_FIELDS = ("input_shape", "mean", "std", "resize", "num_classes", "task")


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


#: ``fp_path`` value that skips the FP32 reference (a slow device checks only the quantized model)
NO_FP = "none"


def verify(qdq_path: str | os.PathLike, data: str | os.PathLike | EvalSet, *,
           fp_path: str | os.PathLike | None = None, threads: int = 1, batch_size: int = 64,
           latency_runs: int = 50, warmup: int = 10, limit: int | None = None,
           progress: ProgressFn | None = None, on_outputs: OutputsFn | None = None) -> VerifyReport:
    """Measure a quantized model against its FP32 reference on onnxruntime (CPU EP).

    The model card's ``task`` decides what is measured. A classifier ((N, K) logits) needs
    labelled data: top-1/top-5 accuracy and per-image top-1 agreement. A segmentation model
    ((N, K, H', W') per-pixel logits) takes an ``.npz`` of images alone or with ``masks``
    (uint8 N×H×W, 255 = ignore, pixel-aligned with the raw images and given their resize/crop,
    nearest-neighbour): per-pixel top-1 agreement with FP32 and the mIoU of the quantized
    prediction against the FP32 one; with masks also pixel accuracy and mIoU of both models
    (confusion matrices summed over the whole set; see :mod:`toolchain.verify.segmentation`).

    Accuracy: both models see the same preprocessed batches (preprocessing from the
    model card in the QDQ file's metadata), sessions at ORT_ENABLE_ALL with
    ``intra_op_num_threads=threads``. Latency: batch 1, ``warmup`` untimed then
    ``latency_runs`` timed ``session.run`` calls per model (time.perf_counter), same
    thread count. Integer ops: the quantized model's optimized graph
    (see :func:`~toolchain.verify.inspect_integer_ops`).

    Args:
        qdq_path: the quantized QDQ .onnx model carrying a zqtool model card.
        data: eval data path (.npz, image folder) or an EvalSet (for a segmentation model: an
            .npz with ``images`` and optional ``masks``, or an EvalSet with a ``masks`` attribute).
        fp_path: the FP32 reference; default ``model.fp32.onnx`` beside ``qdq_path`` if
            it exists, else none (FP32 accuracy and agreement are then null); :data:`NO_FP`
            skips it.
        threads: onnxruntime intra-op threads (0 = its default, all cores).
        batch_size: images per accuracy batch (a static-batch model is run in chunks
            of its batch size, e.g. one image at a time).
        latency_runs: timed runs per model (0 = skip latency).
        on_outputs: passed to :func:`~.evaluate.evaluate` (each batch's logits of "quantized"
            and "fp32", classifiers).
        warmup: untimed runs before timing.
        limit: evaluate only the first ``limit`` images.
        progress: optional hook ``progress(advance, total, description)``; each phase
            ("accuracy", "latency quantized", "latency fp32", "integer ops") first
            calls it with advance 0.

    Returns:
        a :class:`~.results.VerifyReport`; its ``to_dict()`` is the JSON report (percentages are
        floats in 0..100, times in ms)::

            fp32: {top1, top5}  (null values without an FP32 model; null for segmentation)
            quantized: {top1, top5}         (null values for segmentation)
            agreement_top1      % of images with the same top-1 class in both (null w/o FP32);
                                segmentation: % of pixels (argmax over K), = segmentation.pixel_agreement
            top1_drop           fp32.top1 - quantized.top1, points (null w/o FP32; null for segmentation)
            top1_stderr         100*sqrt(p(1-p)/n) of the quantized top-1, points (null for segmentation)
            n_images
            latency_ms: {threads, batch_size, warmup, runs,
                         fp32: {p50, p90, mean, min, runs} | null, quantized: {...} | null}
            bytes: {fp32, quantized}                file sizes
            integer_ops: {conv_total, conv_integer, float_nodes, optimized_op_counts,
                          inspected_level, method}
            ort_version, providers, meta (the model card), files: {quantized, fp32, data},
            machine: {model, arch, flags, source, int16_pair_saturation, native_target,
                      int16_pair_saturation_probed}
                                the CPU (:func:`~toolchain.verify.machine.cpu_info`; the last
                                field measured by :func:`~toolchain.verify.machine.probe_int16_pair_saturation`)
            saturation: {layers: [{node, qmax_act, qmax_weight, bound}] | null, exact_here}
                                integer layers whose codes can saturate an int16 pair sum
                                (null: onnx not installed), and whether this CPU is exact for them
            warnings (list of strings: e.g. saturation on this CPU),
            data_fingerprint, settings, notes (list of strings), zqtool_version, wall_s
            segmentation (only for a segmentation model; % in 0..100):
                {num_classes, output_hw: [H', W'], pixels (n_images*H'*W'),
                 pixel_agreement     % of pixels with the same class in both (null w/o FP32),
                 miou_vs_fp32        mIoU of the quantized prediction vs the FP32 one, % (null w/o FP32),
                 class_iou_vs_fp32   per-class IoU vs FP32, % (null for a class in neither; list null w/o FP32),
                 masks               whether the data had masks, ignore_index (255),
                 labelled_pixels     mask pixels != 255 (null w/o masks),
                 fp32: {pixel_accuracy, miou}, quantized: {pixel_accuracy, miou}
                                     vs the masks, % (null values w/o masks; fp32 also w/o FP32),
                 miou_drop           fp32.miou - quantized.miou, points (null unless both)}

    Raises:
        InputFileError: a model is missing, unloadable, has no zqtool model card, or
            does not match the card / the other model.
        DataError: the data is missing or malformed, or does not fit the model (a classifier
            and no labels; a segmentation model and masks whose size after preprocessing is not
            the output's H'×W', or an eval set without masks support such as an image folder).
        ConfigError: a bad option value.
    """
    t_start = time.perf_counter()
    threads = _count("threads", threads, 0)
    batch_size = check_batch_size(batch_size)
    latency_runs = _count("latency_runs", latency_runs, 0)
    warmup = _count("warmup", warmup, 0)
    limit = check_limit(limit)
    notes: list[str] = []

    qdq_path = Path(qdq_path)
    quantized = Classifier(qdq_path, threads)
    meta = read_model_meta(quantized.metadata, qdq_path)
    quantized.expect(meta.input_shape, meta.num_classes, meta.task)
    fp_path = _reference_path(qdq_path, fp_path, notes)
    fp = None
    if fp_path is not None:
        fp = Classifier(fp_path, threads)
        _check_same_card(fp, meta, fp_path)
        fp.expect(meta.input_shape, meta.num_classes, meta.task)

    if isinstance(data, (str, os.PathLike)):
        data_desc = os.fspath(data)
        data = open_data(data, limit, meta.task)
    else:
        if not all(hasattr(data, a) for a in ("batches", "labels", "__len__")):
            raise ConfigError(f"data must be a path or an EvalSet, got {type(data).__name__}")
        data_desc = repr(data)

    models = {"quantized": quantized} if fp is None else {"quantized": quantized, "fp32": fp}
    for name, clf in models.items():
        if clf.static_batch is not None:
            notes.append(f"the {name} model has a static batch of {clf.static_batch}: "
                         f"evaluated {clf.static_batch} image(s) per run")
    result = evaluate(data, meta, models, batch_size=batch_size, limit=limit, progress=progress,
                      on_outputs=on_outputs)

    lat_q = lat_fp = None
    if latency_runs:
        lat_q = measure_latency(quantized, result.first_image, runs=latency_runs, warmup=warmup,
                                progress=progress, description="latency quantized")
        if fp is not None:
            lat_fp = measure_latency(fp, result.first_image, runs=latency_runs, warmup=warmup,
                                     progress=progress, description="latency fp32")
    else:
        notes.append("latency not measured (latency_runs = 0)")

    int_ops = _integer_ops(qdq_path, notes, progress)
    machine, saturation, warnings = _machine(qdq_path)

    seg = None
    if meta.task == "segmentation":
        seg = _segmentation_block(result.dense, notes)
        q_acc = fp_acc = Accuracy()
        agreement, top1_drop, top1_stderr = seg.pixel_agreement, None, None
    else:
        n = result.n_images
        q_acc = result.tallies["quantized"].accuracy()
        fp_acc = result.tallies["fp32"].accuracy() if fp is not None else Accuracy()
        p = q_acc.top1 / 100.0
        agreement = None if result.agree is None else 100.0 * result.agree / n
        top1_drop = None if fp is None else fp_acc.top1 - q_acc.top1
        top1_stderr = 100.0 * math.sqrt(p * (1.0 - p) / n)
    return VerifyReport(
        fp32=fp_acc, quantized=q_acc, agreement_top1=agreement, top1_drop=top1_drop, top1_stderr=top1_stderr,
        n_images=result.n_images,
        latency_ms=Latency(threads=threads, batch_size=1, warmup=warmup, runs=latency_runs, fp32=lat_fp,
                           quantized=lat_q),
        bytes=Sizes(fp32=fp_path.stat().st_size if fp is not None else None, quantized=qdq_path.stat().st_size),
        integer_ops=int_ops, ort_version=ort.__version__, providers=tuple(quantized.providers),
        machine=machine, saturation=saturation, warnings=warnings, meta=meta,
        files=Files(quantized=os.fspath(qdq_path), fp32=os.fspath(fp_path) if fp is not None else None,
                    data=data_desc),
        data_fingerprint=data.fingerprint() if hasattr(data, "fingerprint") else None,
        settings=Settings(threads=threads, batch_size=batch_size, latency_runs=latency_runs, warmup=warmup,
                          limit=limit),
        notes=tuple(notes), zqtool_version=__version__, wall_s=time.perf_counter() - t_start,
        segmentation=seg)


def _reference_path(qdq_path: Path, fp_path, notes: list[str]) -> Path | None:
    """The FP32 reference to load (see :func:`verify`'s ``fp_path``), or None; notes why there is none.

    Raises:
        InputFileError: a given reference that does not exist.
    """
    if fp_path is not None and str(fp_path) == NO_FP:  # the CLI passes a Path
        notes.append("FP32 reference skipped (--fp none): FP32 accuracy and top-1 agreement not computed")
        return None
    if fp_path is None:
        candidate = qdq_path.with_name(DEFAULT_FP_NAME)
        if candidate.is_file() and candidate.resolve() != qdq_path.resolve():
            return candidate
        notes.append(f"no FP32 reference given and no {DEFAULT_FP_NAME} beside the quantized model: "
                     "FP32 accuracy and top-1 agreement not computed (pass fp_path / --fp)")
        return None
    fp_path = Path(fp_path)
    if not fp_path.is_file():
        raise InputFileError(f"FP32 reference model not found: {fp_path}", "check the --fp path")
    return fp_path


def _integer_ops(qdq_path: Path, notes: list[str], progress: ProgressFn | None) -> IntegerOps:
    """The report's ``integer_ops`` section; notes a fallback level and Conv/Gemm/MatMul left in float."""
    if progress:
        progress(0, 1, "integer ops")
    ops = IntegerOps.from_dict(inspect_integer_ops(qdq_path))
    if progress:
        progress(1, 1, "integer ops")
    if ops.fallback_reason:
        notes.append(f"integer ops read from the {ops.inspected_level} graph: {ops.fallback_reason}")
    if ops.conv_total and ops.conv_integer < ops.conv_total:
        notes.append(f"only {ops.conv_integer} of {ops.conv_total} Conv/Gemm/MatMul nodes run as "
                     "integer kernels on this onnxruntime; the rest compute in float")
    return ops


def _machine(qdq_path: Path) -> tuple[Machine, Saturation, tuple[str, ...]]:
    """The report's ``machine`` and ``saturation`` sections and its ``warnings`` (saturation on this CPU)."""
    cpu = cpu_info()
    probed = probe_int16_pair_saturation()
    saturates = cpu.int16_pair_saturation if probed is None else probed
    risks = saturation_risks(qdq_path)
    warnings = tuple(w for w in (saturation_warning(risks, saturates, cpu),) if w)
    machine = Machine.from_dict({**cpu.to_dict(), "int16_pair_saturation_probed": probed})
    saturation = Saturation(layers=None if risks is None else tuple(risks),
                            exact_here=None if risks is None or saturates is None else (not risks or not saturates))
    return machine, saturation, warnings


def open_data(path: str | os.PathLike, limit: int | None, task: str = "classification") -> EvalSet:
    """Open eval data for a model of ``task``: for a segmentation model a file (not a ``.csv``) is
    read as an ``.npz`` whose ``labels``/``masks`` are optional (:class:`~toolchain.data.NpzEvalSet`
    with ``task="segmentation"``); anything else goes through :func:`~toolchain.data.open_eval_set`.

    Raises:
        DataError: as the readers; ConfigError: a bad limit.
    """
    p = Path(path)
    if task == "segmentation" and p.is_file() and p.suffix.lower() != ".csv":
        return NpzEvalSet(p, limit, task="segmentation")
    return open_eval_set(p, limit)


def _segmentation_block(tally: DenseTally, notes: list[str]) -> Segmentation:
    """The report's ``segmentation`` section (see :func:`verify`); appends notes on what was not measured."""
    masks = bool(tally.vs_masks)
    q, f = tally.against_masks("quantized"), tally.against_masks("fp32")
    miou_drop = None if f.miou is None or q.miou is None else f.miou - q.miou
    if not masks:
        notes.append("no masks in the eval data: pixel accuracy and mIoU against ground truth not computed "
                     "(the FP32 model is the reference)")
    per_class = None if tally.vs_fp32 is None else tuple(
        None if v != v else 100.0 * float(v) for v in class_iou(tally.vs_fp32))
    return Segmentation(
        num_classes=tally.num_classes, output_hw=tuple(tally.output_hw) if tally.output_hw else None,
        pixels=tally.n_pixels, pixel_agreement=tally.pixel_agreement(), miou_vs_fp32=tally.miou_vs_fp32(),
        class_iou_vs_fp32=per_class, masks=masks, ignore_index=IGNORE_INDEX,
        labelled_pixels=tally.labelled_pixels if masks else None, fp32=f, quantized=q, miou_drop=miou_drop)


def _check_same_card(fp: Classifier, meta, fp_path: Path) -> None:
    """If the FP32 model carries a model card too, it must describe the same input and classes."""
    props = fp.metadata
    if not any(k.startswith("zqtool.") for k in props):
        return
    fp_meta = read_model_meta(props, fp_path)
    for f in _CARD_FIELDS:
        a, b = getattr(fp_meta, f), getattr(meta, f)
        if a != b:
            raise InputFileError(
                f"{fp_path} and the quantized model disagree on {f}: {a!r} vs {b!r}",
                "pass the FP32 model exported together with the quantized one")
