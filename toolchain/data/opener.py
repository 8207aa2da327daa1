"""Pick the right eval-set reader for a path."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import DataError
from .folder import LABELS_CSV, ImageFolderEvalSet
from .npz import NpzEvalSet
from .protocol import EvalSet


def open_eval_set(path: str | Path, limit: int | None = None, *, task: str | None = None) -> EvalSet:
    """Open eval data by what ``path`` is.

    - a ``.npz`` file (or any zip archive) → :class:`NpzEvalSet`;
    - a folder holding ``labels.csv``, or a ``.csv`` file → :class:`ImageFolderEvalSet`
      (classification only: per-image labels).

    Args:
        path: file or folder.
        limit: use only the first ``limit`` images (None = all).
        task: the model's task (``ModelMeta.task``): "classification" (labels required),
            "segmentation" (an .npz of images, optional ``masks``), or None (labels or masks).

    Raises:
        DataError: the path does not exist or is of no known kind, or the reader rejects it.
        ConfigError: limit is not a positive integer.
    """
    p = Path(path)
    if task == "segmentation" and (p.is_dir() or p.suffix.lower() == ".csv"):
        raise DataError(f"{p} is an image folder with per-image labels, and the model is a segmentation model",
                        "pass an .npz with images (uint8 NHWC) and optionally masks (uint8 N×H×W, 255 = ignore)")
    if not p.exists():
        raise DataError(f"eval data not found: {p}",
                        "pass an .npz file (images, labels) or a folder with labels.csv")
    if p.is_dir():
        if not (p / LABELS_CSV).is_file():
            raise DataError(f"folder {p} has no {LABELS_CSV}",
                            "an image-folder eval set needs labels.csv with a `file,label` header")
        return ImageFolderEvalSet(p, limit)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return ImageFolderEvalSet(p, limit)
    if suffix == ".npz" or _is_zip(p):
        return NpzEvalSet(p, limit, task=task)
    raise DataError(f"{p} is not a known eval-data format (expected .npz or a folder with labels.csv)",
                    "pass an .npz file (images, labels) or a folder with labels.csv")


def _is_zip(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False
