"""Dense-prediction (segmentation) metrics, numpy only: confusion matrices, pixel accuracy, mIoU.

Every metric is read off a K×K confusion matrix ``cm`` (int64) whose rows are the reference
(the ground-truth mask, or the FP32 model's prediction) and whose columns are the prediction:
``cm[r, p]`` = number of pixels with reference class r predicted as p. Matrices are summed batch
by batch (:class:`DenseTally`), so no prediction is kept after its batch; the per-class IoU is
therefore computed over the whole set, not averaged over images.

- pixel accuracy (agreement, when the reference is a model) = 100 · trace(cm) / sum(cm);
- IoU_c = cm[c, c] / (row_c + col_c − cm[c, c]) = |A_c ∩ B_c| / |A_c ∪ B_c|;
- mIoU = 100 · mean of IoU_c over the classes whose union is non-zero (present in the
  reference or the prediction).

Pixels whose mask value is ``ignore_index`` (255) are counted nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.protocol import IGNORE_INDEX
from .results import MaskScores


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """Count (reference class, predicted class) pairs over the pixels.

    Args:
        reference: integer array of class indices in [0, num_classes) (any shape; e.g. (B, H, W)),
            or ``ignore_index`` for pixels not to count.
        predicted: integer array of class indices in [0, num_classes), same shape.
        num_classes: K.
        ignore_index: reference value of pixels to skip (255 for masks), or None (every pixel counts:
            a model's prediction as the reference).

    Returns:
        int64 (K, K): ``cm[r, p]`` = pixels with reference r and prediction p.

    Raises:
        ValueError: shapes differ, or a value (not ignored) outside [0, num_classes).
    """
    ref = np.asarray(reference)
    pred = np.asarray(predicted)
    if ref.shape != pred.shape:
        raise ValueError(f"reference {ref.shape} and prediction {pred.shape} differ in shape")
    ref = ref.reshape(-1).astype(np.int64, copy=False)
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = ref != ignore_index
        ref, pred = ref[keep], pred[keep]
    k = int(num_classes)
    for name, a in (("reference", ref), ("prediction", pred)):
        if a.size and (a.min() < 0 or a.max() >= k):
            raise ValueError(f"{name} holds class {int(a.min() if a.min() < 0 else a.max())}, outside [0, {k})")
    return np.bincount(ref * k + pred, minlength=k * k).reshape(k, k)


def pixel_accuracy(cm: np.ndarray) -> float | None:
    """% of counted pixels whose prediction equals the reference (0..100); None if none was counted."""
    total = int(cm.sum())
    return None if total == 0 else 100.0 * float(np.trace(cm)) / total


def class_iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU in 0..1, float64 (K,); NaN for a class absent from reference and prediction."""
    cm = np.asarray(cm, np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray) -> float | None:
    """Mean IoU (%, 0..100) over the classes whose union is non-zero; None if there is none."""
    iou = class_iou(cm)
    present = ~np.isnan(iou)
    return None if not present.any() else 100.0 * float(iou[present].mean())


@dataclass
class DenseTally:
    """Confusion matrices of a segmentation model pair, summed batch by batch.

    ``vs_fp32``: rows = FP32 prediction, columns = quantized prediction (None with one model).
    ``vs_masks``: per model, rows = mask, columns = that model's prediction (empty without masks).
    """

    num_classes: int
    vs_fp32: np.ndarray | None = None
    vs_masks: dict[str, np.ndarray] = field(default_factory=dict)
    #: images and pixels seen (pixels = images × H' × W' of the output)
    n_images: int = 0
    n_pixels: int = 0
    #: mask pixels that are not 255 (counted in vs_masks)
    labelled_pixels: int = 0
    #: (H', W') of the models' output
    output_hw: tuple[int, int] | None = None

    def add(self, preds: dict[str, np.ndarray], masks: np.ndarray | None, reference: str = "fp32",
            other: str = "quantized") -> None:
        """Add one batch.

        Args:
            preds: model name → int (B, H', W') predicted classes (argmax over K).
            masks: uint8 (B, H', W') (255 = ignore), or None.
            reference, other: the names compared pixel by pixel (when both are in ``preds``).
        """
        k = self.num_classes
        first = next(iter(preds.values()))
        if reference in preds and other in preds:
            cm = confusion_matrix(preds[reference], preds[other], k)
            self.vs_fp32 = cm if self.vs_fp32 is None else self.vs_fp32 + cm
        if masks is not None:
            self.labelled_pixels += int((masks != IGNORE_INDEX).sum())
            for name, p in preds.items():
                cm = confusion_matrix(masks, p, k, ignore_index=IGNORE_INDEX)
                self.vs_masks[name] = cm if name not in self.vs_masks else self.vs_masks[name] + cm
        self.n_images += len(first)
        self.n_pixels += int(first.size)
        self.output_hw = tuple(int(v) for v in first.shape[1:])

    def pixel_agreement(self) -> float | None:
        """% of pixels with the same class in both models; None with one model."""
        return None if self.vs_fp32 is None else pixel_accuracy(self.vs_fp32)

    def miou_vs_fp32(self) -> float | None:
        """mIoU (%) of the quantized prediction against the FP32 one; None with one model."""
        return None if self.vs_fp32 is None else mean_iou(self.vs_fp32)

    def against_masks(self, name: str) -> MaskScores:
        """Pixel accuracy and mIoU (%) of model ``name`` against the masks (None values without)."""
        cm = self.vs_masks.get(name)
        if cm is None:
            return MaskScores()
        return MaskScores(pixel_accuracy=pixel_accuracy(cm), miou=mean_iou(cm))
