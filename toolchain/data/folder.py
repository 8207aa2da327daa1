"""Eval set stored as a folder of image files plus ``labels.csv``."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path, PurePath

import numpy as np

from ..core.errors import DataError
from ..core.meta import ModelMeta
from .preprocess import preprocess
from .protocol import check_batch_size, check_labels, check_limit


LABELS_CSV = "labels.csv"
IMAGES_DIR = "images"
_HINT = ("the folder needs labels.csv with a `file,label` header and one row per image "
         "(label = class index); images go under images/ or beside labels.csv")


class ImageFolderEvalSet:
    """Labelled images from a folder: ``labels.csv`` + image files.

    Layout::

        folder/labels.csv      file,label   (header, then one row per image)
        folder/images/<file>   (or folder/<file>, beside labels.csv)

    Images are decoded with Pillow (any format it reads), converted to RGB (or to
    L when the model has one channel), then preprocessed for the model.
    ``labels.csv`` is parsed and every named file checked at construction;
    pixels are decoded lazily, batch by batch.

    Args:
        path: the folder, or its ``labels.csv``.
        limit: use only the first ``limit`` rows (None = all).

    Raises:
        DataError: missing folder or labels.csv, a malformed labels.csv (header,
            row width, non-integer label), a row naming a missing file, no rows.
        ConfigError: limit is not a positive integer.
    """

    def __init__(self, path: str | Path, limit: int | None = None):
        path = Path(path)
        self.limit = check_limit(limit)
        if path.is_dir():
            csv_path = path / LABELS_CSV
        elif path.is_file() and path.suffix.lower() == ".csv":
            csv_path = path
        elif not path.exists():
            raise DataError(f"eval data not found: {path}", "check the path given to --data")
        else:
            raise DataError(f"{path} is neither an image folder nor a labels .csv file", _HINT)
        if not csv_path.is_file():
            raise DataError(f"{path} has no {LABELS_CSV}", _HINT)
        self.path = csv_path.parent
        self.csv_path = csv_path
        self._files, labels = self._read_csv(csv_path)
        self._labels = np.asarray(labels, np.int64)
        self._fingerprint: str | None = None

    def _read_csv(self, csv_path: Path) -> tuple[list[Path], list[int]]:
        src = str(csv_path)
        try:
            text = csv_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {src}: {e}", _HINT) from None
        rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
        if not rows:
            raise DataError(f"{src} is empty", _HINT)
        header = [c.strip().lower() for c in rows[0]]
        if "file" not in header or "label" not in header:
            raise DataError(f"{src}: first line is {','.join(rows[0])!r}, expected the header 'file,label'",
                            _HINT)
        fi, li = header.index("file"), header.index("label")
        body = rows[1:]
        if not body:
            raise DataError(f"{src} lists no images", _HINT)
        if self.limit is not None:
            body = body[: self.limit]
        files: list[Path] = []
        labels: list[int] = []
        missing: list[str] = []
        images_dir = csv_path.parent / IMAGES_DIR
        for lineno, row in enumerate(body, start=2):
            if len(row) <= max(fi, li):
                raise DataError(f"{src} line {lineno}: expected {len(header)} columns, got {len(row)}: "
                                f"{','.join(row)!r}", _HINT)
            name, label = row[fi].strip(), row[li].strip()
            try:
                labels.append(int(label))
            except ValueError:
                raise DataError(f"{src} line {lineno}: label {label!r} is not an integer class index",
                                _HINT) from None
            rel = PurePath(name)
            if not name or rel.is_absolute() or ".." in rel.parts:
                raise DataError(f"{src} line {lineno}: file name {name!r} must be relative to the folder",
                                _HINT)
            for cand in (images_dir / rel, csv_path.parent / rel):
                if cand.is_file():
                    files.append(cand)
                    break
            else:
                missing.append(f"line {lineno}: {name}")
        if missing:
            raise DataError(
                f"{src} names {len(missing)} file(s) that are neither in {IMAGES_DIR}/ nor beside "
                f"{LABELS_CSV} (first: {missing[0]})",
                "fix the file names in labels.csv or copy the missing images",
            )
        return files, labels

    def __len__(self) -> int:
        return len(self._labels)

    def __repr__(self) -> str:
        return f"ImageFolderEvalSet({str(self.path)!r}, n={len(self)})"

    @property
    def labels(self) -> np.ndarray:
        """Class indices, int64 (N,)."""
        return self._labels

    @property
    def files(self) -> list[Path]:
        """The image files, in labels.csv order."""
        return list(self._files)

    def load_image(self, index: int, channels: int = 3) -> np.ndarray:
        """Decode one image with Pillow.

        Args:
            index: row in labels.csv order (0-based).
            channels: 3 → RGB, 1 → grayscale (L).

        Returns:
            uint8 (H, W, channels).

        Raises:
            DataError: the file cannot be decoded, or channels is not 1 or 3.
        """
        from PIL import Image, UnidentifiedImageError  # lazy: only when decoding

        if channels not in (1, 3):
            raise DataError(f"image folders provide RGB or grayscale images, but the model expects "
                            f"{channels} channels", "use an .npz eval set with (N, H, W, C) images")
        f = self._files[index]
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot decode image {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                            "remove or replace the corrupt file") from None
        return arr if arr.ndim == 3 else arr[:, :, None]

    def batches(self, meta: ModelMeta, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(x float32 (B,C,H,W), y int64 (B,))`` in labels.csv order.

        Raises:
            DataError: labels outside [0, meta.num_classes), a model with other than 1 or
                3 channels, an undecodable image, an image smaller than the model input.
        """
        batch_size = check_batch_size(batch_size)
        check_labels(self._labels, meta.num_classes, str(self.csv_path))
        c = meta.input_shape[0]
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            imgs = [self.load_image(i, c) for i in range(start, stop)]
            yield preprocess(imgs, meta), self._labels[start:stop]

    def fingerprint(self) -> str:
        """sha256 (hex) over labels.csv, the limit, and each used image's name and bytes."""
        if self._fingerprint is None:
            h = hashlib.sha256(b"zqtool-folder-evalset-v1\0")
            h.update(self.csv_path.read_bytes())
            h.update(f"\0limit={self.limit}\0".encode())
            for f in self._files:
                h.update(f.relative_to(self.path).as_posix().encode() + b"\0")
                h.update(hashlib.sha256(f.read_bytes()).digest())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
