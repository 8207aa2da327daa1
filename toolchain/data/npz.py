"""Eval set stored as one ``.npz`` file: ``images`` uint8 NHWC and ``labels``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from .preprocess import preprocess
from .protocol import as_int64_labels, check_batch_size, check_labels, check_limit

if TYPE_CHECKING:  # annotations only: toolchain.models' __init__ imports torch
    from ..models.meta import ModelMeta

_HINT = "save it with np.savez(path, images=<uint8 (N,H,W,C)>, labels=<int64 (N,)>)"


class NpzEvalSet:
    """Labelled images from a ``.npz`` file.

    The file holds ``images``: uint8 (N, H, W, C) RGB (or (N, H, W) grayscale), and
    ``labels``: integer (N,) class indices. Both are read into memory at
    construction (only the first ``limit`` are kept).

    Args:
        path: the ``.npz`` file.
        limit: use only the first ``limit`` images (None = all).

    Raises:
        DataError: missing or unreadable file, missing ``images``/``labels`` arrays,
            wrong dtype or shape, image and label counts that differ, an empty set.
        ConfigError: limit is not a positive integer.
    """

    def __init__(self, path: str | Path, limit: int | None = None):
        self.path = Path(path)
        self.limit = check_limit(limit)
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
                missing = [k for k in ("images", "labels") if k not in keys]
                if missing:
                    raise DataError(
                        f"{src} has no {' / '.join(repr(k) for k in missing)} array "
                        f"(found: {', '.join(sorted(keys)) or 'nothing'})",
                        _HINT,
                    )
                images = z["images"]
                labels = z["labels"]
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
        labels = as_int64_labels(labels, src)
        if len(labels) != len(images):
            raise DataError(f"{src}: {len(images)} images but {len(labels)} labels",
                            "store exactly one label per image")
        if len(images) == 0:
            raise DataError(f"{src} holds no images", _HINT)
        if self.limit is not None:
            images, labels = images[: self.limit], labels[: self.limit]
        self._images = images
        self._labels = labels
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._labels)

    def __repr__(self) -> str:
        return f"NpzEvalSet({str(self.path)!r}, n={len(self)})"

    @property
    def labels(self) -> np.ndarray:
        """Class indices, int64 (N,)."""
        return self._labels

    @property
    def images(self) -> np.ndarray:
        """Raw pixels, uint8 (N, H, W, C) or (N, H, W)."""
        return self._images

    def batches(self, meta: ModelMeta, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(x float32 (B,C,H,W), y int64 (B,))`` in file order.

        Raises:
            DataError: labels outside [0, meta.num_classes), channel count or image size
                that does not fit ``meta`` (raised before the first batch).
        """
        batch_size = check_batch_size(batch_size)
        check_labels(self._labels, meta.num_classes, str(self.path))
        n = len(self)
        # fail before any work if the images cannot fit the model
        preprocess(self._images[:1], meta)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield preprocess(self._images[start:stop], meta), self._labels[start:stop]

    def fingerprint(self) -> str:
        """sha256 (hex) over the images' and labels' dtype, shape and bytes."""
        if self._fingerprint is None:
            h = hashlib.sha256(b"zqtool-npz-evalset-v1\0")
            for arr in (self._images, self._labels):
                a = np.ascontiguousarray(arr)
                h.update(f"{a.dtype.str}{a.shape}\0".encode())
                h.update(a.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
