"""Accuracy of one or two models on the same images, and their top-1 agreement.

Classifiers: top-1/top-5 hits against the labels, per-image top-1 agreement. Segmentation
models (``meta.task == "segmentation"``): confusion matrices per pixel against the other model
and the masks (:class:`~toolchain.verify.segmentation.DenseTally`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..data.protocol import EvalSet, check_batch_size
from ..core.errors import DataError, InputFileError
from .results import Accuracy
from .segmentation import DenseTally
from .session import Classifier

#: progress hook: (advance: int, total: int, description: str) -> None
ProgressFn = Callable[[int, int, str], None]
#: ``(model name, float32 outputs of one batch)``
OutputsFn = Callable[[str, np.ndarray], None]


@dataclass
class Tally:
    """Correct-prediction counts of one model over n images."""

    top1: int = 0
    top5: int = 0
    n: int = 0

    def accuracy(self) -> Accuracy:
        """Top-1 / top-5 in % (0..100; NaN-free: 0 when n == 0)."""
        d = max(self.n, 1)
        return Accuracy(top1=100.0 * self.top1 / d, top5=100.0 * self.top5 / d)


@dataclass
class EvalResult:
    """What :func:`evaluate` measured."""

    n_images: int
    tallies: dict[str, Tally]
    #: images on which the first two models' top-1 classes agree (None with one model)
    agree: int | None
    #: the first preprocessed image, float32 (1, C, H, W): the latency probe
    first_image: np.ndarray | None = field(default=None, repr=False)
    #: segmentation models: the summed confusion matrices (then ``tallies`` is empty, ``agree`` None)
    dense: DenseTally | None = None


def _limited(data: EvalSet, meta, batch_size: int, total: int, progress: ProgressFn | None):
    """``data.batches`` cut to the first ``total`` images, reporting progress after each batch."""
    seen = 0
    if progress:
        progress(0, total, "accuracy")
    for x, y in data.batches(meta, batch_size):
        if seen >= total:
            break
        x = x[: total - seen]
        y = None if y is None else y[: total - seen]
        yield x, y
        seen += len(x)
        if progress:
            progress(len(x), total, "accuracy")


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each label is among the k largest logits.

    Args:
        logits: float (B, K); labels: int (B,); k: 1..K (clipped to K).

    Returns:
        bool (B,).
    """
    k = min(k, logits.shape[1])
    if k == 1:
        return logits.argmax(axis=1) == labels
    if k == logits.shape[1]:
        return np.ones(len(labels), bool)
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def evaluate(data: EvalSet, meta, models: Mapping[str, Classifier], *, batch_size: int = 64,
             limit: int | None = None, progress: ProgressFn | None = None,
             on_outputs: OutputsFn | None = None) -> EvalResult:
    """Run every model on the same preprocessed batches and count top-1/top-5 hits (classifiers)
    or accumulate per-pixel confusion matrices (segmentation models, :func:`evaluate_dense`).

    Args:
        data: the eval set.
        meta: ModelMeta used to preprocess (input_shape, mean, std, resize, num_classes, task).
        models: name → classifier, evaluated in order; agreement is between the first two.
        batch_size: images per batch (>= 1).
        limit: stop after this many images (None = all).
        progress: called as ``progress(advance, total, "accuracy")``; first with advance 0.
        on_outputs: called as ``on_outputs(name, outputs)`` with every batch's float32 logits
            of every model (classifiers), e.g. to keep them for a host/device comparison.

    Returns:
        EvalResult with per-model tallies, agreement count and the first image.

    Raises:
        DataError: the data set is empty or its images/labels do not fit the model.
        InputFileError: a model's output does not match the model card.
    """
    if getattr(meta, "task", "classification") == "segmentation":
        return evaluate_dense(data, meta, models, batch_size=batch_size, limit=limit, progress=progress)
    batch_size = check_batch_size(batch_size)
    total = _total(data, limit)
    names = list(models)
    tallies = {name: Tally() for name in names}
    agree = 0 if len(names) >= 2 else None
    first = None
    seen = 0
    for x, y in _limited(data, meta, batch_size, total, progress):
        y = np.asarray(y, np.int64)
        if first is None:
            first = np.array(x[:1], copy=True)
        top1 = {}
        for name in names:
            logits = models[name].logits(x)
            if on_outputs is not None:
                on_outputs(name, logits)
            t = tallies[name]
            top1[name] = logits.argmax(axis=1)
            t.top1 += int((top1[name] == y).sum())
            t.top5 += int(topk_hits(logits, y, 5).sum())
            t.n += len(y)
        if agree is not None:
            agree += int((top1[names[0]] == top1[names[1]]).sum())
        seen += len(y)
    if seen == 0:
        raise DataError("the eval set yielded no images", "pass a data set with at least one image")
    return EvalResult(n_images=seen, tallies=tallies, agree=agree, first_image=first)


def _total(data: EvalSet, limit: int | None) -> int:
    total = len(data) if limit is None else min(len(data), int(limit))
    if total <= 0:
        raise DataError("the eval set holds no images", "pass a data set with at least one image")
    return total


def evaluate_dense(data: EvalSet, meta, models: Mapping[str, Classifier], *, batch_size: int = 64,
                   limit: int | None = None, progress: ProgressFn | None = None,
                   reference: str = "fp32", other: str = "quantized") -> EvalResult:
    """Run segmentation models on the same batches and sum their per-pixel confusion matrices.

    Each model's (B, K, H', W') logits become (B, H', W') classes (argmax over K) and are
    dropped after the batch. Counted: ``reference`` vs ``other`` pixel by pixel (when both are
    in ``models``), and each model vs the masks when the set has them (255 = ignore).

    Args:
        data: an eval set that serves segmentation data (has a ``masks`` attribute: uint8
            (N, H, W) or None; its batches yield ``(x, masks (B, H, W) | None)``).
        meta: the model card (task "segmentation", num_classes K, preprocessing).
        models: name → model (its ``expect`` called with task "segmentation").
        batch_size, limit, progress: as for :func:`evaluate` (progress description "accuracy").
        reference, other: the model names compared with each other.

    Returns:
        EvalResult with ``dense`` (a DenseTally), empty ``tallies``, ``agree`` None.

    Raises:
        DataError: an empty set, a set without segmentation support (e.g. an image folder with
            per-image labels), masks whose size after preprocessing is not the models' output size.
        InputFileError: a model's output is not (B, K, H', W'), or the two models' H'×W' differ.
    """
    batch_size = check_batch_size(batch_size)
    if not hasattr(data, "masks"):
        raise DataError(
            f"{data!r} holds per-image class labels, not per-pixel masks, and the model is a segmentation model",
            "pass an .npz with images (uint8 NHWC) and optionally masks (uint8 N×H×W, 255 = ignore)")
    total = _total(data, limit)
    names = list(models)
    tally = DenseTally(int(meta.num_classes))
    first = None
    seen = 0
    for x, masks in _limited(data, meta, batch_size, total, progress):
        if masks is not None:
            masks = np.asarray(masks)
            if masks.ndim != 3 or len(masks) != len(x):
                raise DataError(f"{data!r} served masks of shape {masks.shape} for a batch of {len(x)} images",
                                "a segmentation eval set yields uint8 (B, H, W) masks")
        if first is None:
            first = np.array(x[:1], copy=True)
        preds = {}
        for name in names:
            out = models[name].logits(x)
            if out.ndim != 4:
                raise InputFileError(f"{name} model: output of shape {tuple(out.shape)}, expected (B, K, H, W)",
                                     "use the ONNX files and model card from the same export")
            preds[name] = out.argmax(axis=1)
            del out
        hw = {name: p.shape[1:] for name, p in preds.items()}
        if len(set(hw.values())) > 1:
            raise InputFileError(
                "the models' per-pixel outputs differ in size: "
                + ", ".join(f"{n} {h}x{w}" for n, (h, w) in hw.items()),
                "use the FP32 and quantized ONNX files from the same export")
        out_hw = next(iter(hw.values()))
        if masks is not None and masks.shape[1:] != out_hw:
            raise DataError(
                f"the masks are {masks.shape[1]}x{masks.shape[2]} after preprocessing (the model input's size) "
                f"but the model outputs {out_hw[0]}x{out_hw[1]} per-pixel logits",
                "verify compares masks at the output size: export the model with its final upsampling "
                "to the input size, or leave the masks out (agreement with FP32 only)")
        try:
            tally.add(preds, masks, reference, other)
        except ValueError as e:  # a mask value outside [0, K) and not 255 from a custom eval set
            raise DataError(f"{data!r}: masks: {e}",
                            "mask values must be class indices of the model, or 255 for unlabelled pixels") from None
        seen += len(x)
    if seen == 0:
        raise DataError("the eval set yielded no images", "pass a data set with at least one image")
    return EvalResult(n_images=seen, tallies={}, agree=None, first_image=first, dense=tally)
