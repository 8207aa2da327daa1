"""The eval-set protocol: what ``verify`` needs from an evaluation data set.

Modelled on onnxruntime's ``CalibrationDataReader``: a tiny interface that any
reader can satisfy, so stage 4 never cares whether images come from an
``.npz`` file, a folder of JPEGs or the user's own code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from ..core.errors import ConfigError, DataError
from ..core.meta import TASKS, ModelMeta


#: mask value marking a pixel as unlabelled: not counted in pixel accuracy or mIoU
IGNORE_INDEX = 255
#: what ``task`` a reader may be opened for (None: whatever the data holds)
EVAL_TASKS = TASKS


@runtime_checkable
class EvalSet(Protocol):
    """An evaluation set: images, with per-image class labels and/or per-pixel masks.

    Implementations: :class:`~toolchain.data.NpzEvalSet`,
    :class:`~toolchain.data.ImageFolderEvalSet`; any object with these members works.

    A reader that can serve a segmentation model (``meta.task == "segmentation"``) also has a
    ``masks`` attribute: uint8 (N, H, W) per-pixel class indices (255 = ignore), or None when the
    set holds images only; readers without it (image folders) serve classification models only.
    """

    def __len__(self) -> int:
        """Number of images N (after ``limit``)."""
        ...

    @property
    def labels(self) -> np.ndarray | None:
        """Class indices, int64, shape (N,); None for a set without class labels (segmentation data)."""
        ...

    def batches(
        self, meta: ModelMeta, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(x, y)`` in order: x float32 (B, C, H, W) preprocessed for ``meta``
        (see :func:`~toolchain.data.preprocess`), B <= batch_size, and y:

        - ``meta.task == "classification"``: int64 (B,) class labels;
        - ``meta.task == "segmentation"``: uint8 (B, H, W) masks given the images' geometric
          transform (:func:`transform_masks`; 255 = ignore), or None for a set without masks.

        Raises:
            DataError: labels outside [0, meta.num_classes) or mask values outside it and not 255,
                a classification model and no labels, images that do not fit the model
                (channels, size), unreadable images.
        """
        ...

    def fingerprint(self) -> str:
        """sha256 (hex) of the content served (images, labels, masks), for cache keys."""
        ...


def check_limit(limit: int | None) -> int | None:
    """Validate a ``limit`` option (None = all images).

    Raises:
        ConfigError: limit is not a positive integer.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ConfigError(f"limit must be a positive number of images, got {limit!r}",
                          "leave it out to use every image")
    return int(limit)


def check_batch_size(batch_size: int) -> int:
    """Validate a batch size (images per batch, >= 1).

    Raises:
        ConfigError: batch_size is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Check that every label is a class index of the model.

    Args:
        labels: int64 (N,).
        num_classes: number of logits of the model.
        source: the data set's path, for the message.

    Raises:
        DataError: a label is < 0 or >= num_classes.
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{source}: label {int(labels[i])} of image {i} is outside [0, {num_classes}) "
            f"({bad.size} such labels)",
            "labels must be class indices in the model's output order; "
            "check the data set matches the model",
        )


def as_int64_labels(values, source: str) -> np.ndarray:
    """Convert labels to int64 (N,), refusing non-integer or non-1-D input.

    Raises:
        DataError: labels are not a 1-D array of integers.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D (N,), got shape {arr.shape}",
                        "store one integer class index per image")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size:
            raise DataError(f"{source}: labels must be integers, got dtype {arr.dtype}",
                            "store class indices as int64")
    return arr.astype(np.int64, copy=False)


def check_task(task: str | None) -> str | None:
    """Validate the ``task`` a reader is opened for: None, "classification" or "segmentation".

    Raises:
        ConfigError: any other value.
    """
    if task is not None and task not in EVAL_TASKS:
        raise ConfigError(f"task must be one of {', '.join(EVAL_TASKS)} (or None), got {task!r}")
    return task


def check_masks(masks, n_images: int, image_hw: tuple[int, int], source: str) -> np.ndarray:
    """Check per-pixel masks against their images (at reading time, before any model is known).

    Args:
        masks: the stored array; must be uint8 (N, H, W): class index per pixel, 255 = ignore.
        n_images: N of the images.
        image_hw: (H, W) of the raw (not yet preprocessed) images: masks are pixel-aligned with them.
        source: the data set's path, for the message.

    Returns:
        the masks, uint8 (N, H, W).

    Raises:
        DataError: another dtype, not 3-D, a count different from the images', or an H×W
            different from the images'.
    """
    hint = "store masks as uint8 (N, H, W), one class index per image pixel, 255 = ignore"
    arr = np.asarray(masks)
    if arr.dtype != np.uint8:
        raise DataError(f"{source}: 'masks' has dtype {arr.dtype}, expected uint8 class indices (255 = ignore)",
                        hint)
    if arr.ndim != 3:
        extra = " (drop the channel axis: masks[..., 0])" if arr.ndim == 4 and arr.shape[-1] == 1 else ""
        raise DataError(f"{source}: 'masks' has shape {arr.shape}, expected (N, H, W){extra}", hint)
    if len(arr) != n_images:
        raise DataError(f"{source}: {n_images} images but {len(arr)} masks", "store exactly one mask per image")
    if tuple(arr.shape[1:]) != tuple(image_hw):
        raise DataError(
            f"{source}: masks are {arr.shape[1]}x{arr.shape[2]} pixels but the images are "
            f"{image_hw[0]}x{image_hw[1]}; a mask must be pixel-aligned with its raw image", hint)
    return arr


def check_mask_values(masks: np.ndarray, num_classes: int, source: str) -> None:
    """Check that every mask pixel is a class index of the model or 255 (ignore).

    Args:
        masks: uint8 (N, H, W).
        num_classes: K, the model's number of classes.
        source: the data set's path, for the message.

    Raises:
        DataError: a value >= num_classes other than 255.
    """
    if num_classes >= IGNORE_INDEX:
        return  # every uint8 value but 255 is a class
    counts = np.bincount(np.asarray(masks, np.uint8).ravel(), minlength=256)
    bad = np.flatnonzero(counts[num_classes:IGNORE_INDEX]) + num_classes
    if bad.size:
        v = int(bad[0])
        i = int(np.flatnonzero((masks == v).reshape(len(masks), -1).any(1))[0])
        raise DataError(
            f"{source}: mask value {v} (image {i}) is outside [0, {num_classes}) and not {IGNORE_INDEX} "
            f"(ignore); {int(counts[bad].sum())} such pixels",
            "mask values must be class indices in the model's output order, or 255 for unlabelled pixels")


def transform_masks(masks: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """Give masks the geometric part of :func:`~toolchain.data.preprocess`, nearest-neighbour.

    The masks must be pixel-aligned with the raw images (same H×W). With ``meta.resize`` set, each
    mask is resized so its shorter side is ``resize`` pixels (Pillow NEAREST, the same output size
    and pixel-centre mapping as the images' bilinear resize; no value is interpolated), then
    centre-cropped to the model input's (H, W) at the same offsets as the images. Without
    ``resize`` the images (and so the masks) must already be (H, W); they are returned as is.

    Args:
        masks: uint8 (N, H0, W0), or a sequence of uint8 (H0, W0) arrays.
        meta: the model card (input_shape, resize).

    Returns:
        uint8 (N, H, W), (H, W) = ``meta.input_shape[1:]``.

    Raises:
        DataError: a mask smaller than the model input after the resize (its image is refused
            by preprocess for the same reason), or one that is not (H, W) without a resize.
    """
    from .preprocess import center_crop  # preprocess imports nothing from here

    _, height, width = meta.input_shape
    out = np.empty((len(masks), height, width), np.uint8)
    for i in range(len(masks)):
        m = np.asarray(masks[i], np.uint8)
        if meta.resize is not None:
            m = _resize_shorter_side_nearest(m, int(meta.resize))
        elif m.shape != (height, width):
            raise DataError(f"mask {i} is {m.shape[0]}x{m.shape[1]} pixels but the model takes {height}x{width} "
                            "and its model card has no resize step",
                            f"store the images and masks at {height}x{width}")
        if m.shape != (height, width):
            m = center_crop(m, height, width, i)
        out[i] = m
    return out


def _resize_shorter_side_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) → (H', W') with the shorter side ``size`` (torchvision's long side
    ``int(size * long / short)``, as :func:`~toolchain.data.resize_shorter_side`), Pillow NEAREST."""
    from PIL import Image  # lazy: only needed when resizing

    from .preprocess import shorter_side_size
    h, w = mask.shape
    if min(h, w) == size:
        return mask
    new_h, new_w = shorter_side_size(h, w, size)
    nearest = getattr(Image, "Resampling", Image).NEAREST
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize((new_w, new_h), nearest))
