"""The eval-set protocol: what ``verify`` needs from a labelled data set.

Modelled on onnxruntime's ``CalibrationDataReader``: a tiny interface that any
reader can satisfy, so stage 4 never cares whether images come from an
``.npz`` file, a folder of JPEGs or the user's own code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, DataError

if TYPE_CHECKING:  # annotations only: toolchain.models' __init__ imports torch
    from ..models.meta import ModelMeta


@runtime_checkable
class EvalSet(Protocol):
    """A labelled evaluation set.

    Implementations: :class:`~toolchain.data.NpzEvalSet`,
    :class:`~toolchain.data.ImageFolderEvalSet`; any object with these members works.
    """

    def __len__(self) -> int:
        """Number of images N (after ``limit``)."""
        ...

    @property
    def labels(self) -> np.ndarray:
        """Class indices, int64, shape (N,)."""
        ...

    def batches(
        self, meta: ModelMeta, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(x, y)`` in order: x float32 (B, C, H, W) preprocessed for ``meta``
        (see :func:`~toolchain.data.preprocess`), y int64 (B,), B <= batch_size.

        Raises:
            DataError: labels outside [0, meta.num_classes), images that do not fit
                the model (channels, size), unreadable images.
        """
        ...

    def fingerprint(self) -> str:
        """sha256 (hex) of the content served (images and labels), for cache keys."""
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
