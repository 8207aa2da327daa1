"""Eval set stored as one ``.npz`` file: ``images`` uint8 NHWC with ``labels`` and/or ``masks``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.meta import ModelMeta
from .preprocess import preprocess
from .protocol import (as_int64_labels, check_batch_size, check_labels, check_limit, check_mask_values,
                       check_masks, check_task, transform_masks)


_HINT = "save it with np.savez(path, images=<uint8 (N,H,W,C)>, labels=<int64 (N,)>)"
_SEG_HINT = ("a segmentation model takes np.savez(path, images=<uint8 (N,H,W,C)>, masks=<uint8 (N,H,W)>) "
             "or images alone")


class NpzEvalSet:
    """Images from a ``.npz`` file, with class labels (classification) and/or masks (segmentation).

    The file holds ``images``: uint8 (N, H, W, C) RGB (or (N, H, W) grayscale), and
    ``labels``: integer (N,) class indices (classification), and/or ``masks``: uint8 (N, H, W)
    per-pixel class indices, 255 = ignore, pixel-aligned with the raw images (same H×W; they are
    given the images' resize and crop, nearest-neighbour, see
    :func:`~toolchain.data.protocol.transform_masks`). A segmentation set may hold images alone:
    its model is then compared with the FP32 reference only. All arrays are read into memory at
    construction (only the first ``limit`` are kept).

    Args:
        path: the ``.npz`` file.
        limit: use only the first ``limit`` images (None = all).
        task: what the set is opened for: "classification" (``labels`` required), "segmentation"
            (``masks`` optional, images alone are fine) or None (``labels`` or ``masks`` required).

    Raises:
        DataError: missing or unreadable file, missing ``images`` array, no ``labels`` where
            they are required, wrong dtype or shape, image and label/mask counts that differ,
            masks of another H×W than the images, an empty set.
        ConfigError: limit is not a positive integer, or an unknown task.
    """

    def __init__(self, path: str | Path, limit: int | None = None, *, task: str | None = None):
        self.path = Path(path)
        self.limit = check_limit(limit)
        self.task = check_task(task)
        src = str(self.path)
        if not self.path.is_file():
            raise DataError(f"eval data file not found: {src}", "check the path given to --data")
        try:
            z = np.load(self.path, allow_pickle=False)
            if not hasattr(z, "files"):  # a bare .npy array, not an archive
                raise DataError(f"{src} holds a single array, not an .npz archive with images and labels",
                                _HINT)
            with z:
                keys = set(z.files)
                required = ["images"]
                if task == "classification" or (task is None and "masks" not in keys):
                    required.append("labels")
                missing = [k for k in required if k not in keys]
                if missing:
                    hint = _HINT
                    if "labels" in missing and task is None and "images" in keys:
                        hint += "; " + _SEG_HINT
                    raise DataError(
                        f"{src} has no {' / '.join(repr(k) for k in missing)} array "
                        f"(found: {', '.join(sorted(keys)) or 'nothing'})",
                        hint,
                    )
                images = z["images"]
                labels = z["labels"] if "labels" in keys else None
                masks = z["masks"] if "masks" in keys else None
        except DataError:
            raise
        except Exception as e:  # corrupt/truncated zip, pickled arrays, zlib errors …
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"cannot read {src} as a .npz file: {reason}", _HINT) from None
        if images.dtype != np.uint8:
            raise DataError(f"{src}: 'images' has dtype {images.dtype}, expected uint8 (pixel values 0..255)",
                            _HINT)
        if images.ndim not in (3, 4) or min(images.shape[1:]) < 1:
            raise DataError(f"{src}: 'images' has shape {images.shape}, expected (N, H, W, C) or (N, H, W)",
                            _HINT)
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3, 4):
            raise DataError(f"{src}: 'images' has shape {images.shape}, which looks like NCHW; expected NHWC",
                            "transpose before saving: images.transpose(0, 2, 3, 1)")
        if labels is not None:
            labels = as_int64_labels(labels, src)
            if len(labels) != len(images):
                raise DataError(f"{src}: {len(images)} images but {len(labels)} labels",
                                "store exactly one label per image")
        if masks is not None:
            masks = check_masks(masks, len(images), images.shape[1:3], src)
        if len(images) == 0:
            raise DataError(f"{src} holds no images", _HINT)
        if self.limit is not None:
            images = images[: self.limit]
            labels = None if labels is None else labels[: self.limit]
            masks = None if masks is None else masks[: self.limit]
        self._images = images
        self._labels = labels
        self._masks = masks
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return f"NpzEvalSet({str(self.path)!r}, n={len(self)})"

    @property
    def labels(self) -> np.ndarray | None:
        """Class indices, int64 (N,); None when the file holds no ``labels``."""
        return self._labels

    @property
    def masks(self) -> np.ndarray | None:
        """Per-pixel class indices of the raw images, uint8 (N, H, W), 255 = ignore; None when
        the file holds no ``masks``."""
        return self._masks

    @property
    def images(self) -> np.ndarray:
        """Raw pixels, uint8 (N, H, W, C) or (N, H, W)."""
        return self._images

    def batches(self, meta: ModelMeta, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(x float32 (B,C,H,W), y)`` in file order; y is int64 (B,) labels for a
        classification ``meta``, and for a segmentation one uint8 (B, H, W) masks resized and
        cropped like the images (nearest-neighbour; (H, W) = the model input's) or None when the
        file holds no masks.

        Raises:
            DataError: a classification model and no labels in the file, labels outside
                [0, meta.num_classes), mask values outside it and not 255, channel count or
                image size that does not fit ``meta`` (raised before the first batch).
        """
        batch_size = check_batch_size(batch_size)
        src = str(self.path)
        segmentation = getattr(meta, "task", "classification") == "segmentation"
        if segmentation:
            if self._masks is not None:
                check_mask_values(self._masks, meta.num_classes, src)
        elif self._labels is None:
            found = ", ".join(k for k, v in (("images", self._images), ("masks", self._masks)) if v is not None)
            raise DataError(f"{src} has no 'labels' array (found: {found}) and the model is a classifier",
                            _HINT + " (masks are for segmentation models)")
        else:
            check_labels(self._labels, meta.num_classes, src)
        n = len(self)
        # fail before any work if the images (and masks) cannot fit the model
        preprocess(self._images[:1], meta)
        if segmentation and self._masks is not None:
            transform_masks(self._masks[:1], meta)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = preprocess(self._images[start:stop], meta)
            if not segmentation:
                y = self._labels[start:stop]
            else:
                y = None if self._masks is None else transform_masks(self._masks[start:stop], meta)
            yield x, y

    def fingerprint(self) -> str:
        """sha256 (hex) over the images', labels' and masks' dtype, shape and bytes (a set with
        images and labels only hashes as before masks existed)."""
        if self._fingerprint is None:
            h = hashlib.sha256(b"zqtool-npz-evalset-v1\0")
            for tag, arr in ((b"", self._images), (b"", self._labels), (b"masks\0", self._masks)):
                if arr is None:
                    continue
                a = np.ascontiguousarray(arr)
                h.update(tag)
                h.update(f"{a.dtype.str}{a.shape}\0".encode())
                h.update(a.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
