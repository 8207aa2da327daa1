"""Accuracy of one or two classifiers on the same labelled images, and their top-1 agreement."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..data.protocol import EvalSet, check_batch_size
from ..errors import DataError
from .session import Classifier

#: progress hook: (advance: int, total: int, description: str) -> None
ProgressFn = Callable[[int, int, str], None]


@dataclass
class Tally:
    """Correct-prediction counts of one model over n images."""

    top1: int = 0
    top5: int = 0
    n: int = 0

    def percent(self) -> dict[str, float]:
        """{"top1", "top5"}: percentages in 0..100 (NaN-free: 0 when n == 0)."""
        d = max(self.n, 1)
        return {"top1": 100.0 * self.top1 / d, "top5": 100.0 * self.top5 / d}


@dataclass
class EvalResult:
    """What :func:`evaluate` measured."""

    n_images: int
    tallies: dict[str, Tally]
    #: images on which the first two models' top-1 classes agree (None with one model)
    agree: int | None
    #: the first preprocessed image, float32 (1, C, H, W): the latency probe
    first_image: np.ndarray | None = field(default=None, repr=False)


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
             limit: int | None = None, progress: ProgressFn | None = None) -> EvalResult:
    """Run every model on the same preprocessed batches and count top-1/top-5 hits.

    Args:
        data: the eval set.
        meta: ModelMeta used to preprocess (input_shape, mean, std, resize, num_classes).
        models: name → classifier, evaluated in order; agreement is between the first two.
        batch_size: images per batch (>= 1).
        limit: stop after this many images (None = all).
        progress: called as ``progress(advance, total, "accuracy")``; first with advance 0.

    Returns:
        EvalResult with per-model tallies, agreement count and the first image.

    Raises:
        DataError: the data set is empty or its images/labels do not fit the model.
        InputFileError: a model's output does not match the model card.
    """
    batch_size = check_batch_size(batch_size)
    total = len(data) if limit is None else min(len(data), int(limit))
    if total <= 0:
        raise DataError("the eval set holds no images", "pass a data set with at least one image")
    names = list(models)
    tallies = {name: Tally() for name in names}
    agree = 0 if len(names) >= 2 else None
    first = None
    seen = 0
    if progress:
        progress(0, total, "accuracy")
    for x, y in data.batches(meta, batch_size):
        if seen >= total:
            break
        x, y = x[: total - seen], np.asarray(y[: total - seen], np.int64)
        if first is None:
            first = np.array(x[:1], copy=True)
        top1 = {}
        for name in names:
            logits = models[name].logits(x)
            t = tallies[name]
            top1[name] = logits.argmax(axis=1)
            t.top1 += int((top1[name] == y).sum())
            t.top5 += int(topk_hits(logits, y, 5).sum())
            t.n += len(y)
        if agree is not None:
            agree += int((top1[names[0]] == top1[names[1]]).sum())
        seen += len(y)
        if progress:
            progress(len(y), total, "accuracy")
    if seen == 0:
        raise DataError("the eval set yielded no images", "pass a data set with at least one image")
    return EvalResult(n_images=seen, tallies=tallies, agree=agree, first_image=first)
