"""What a model file is, read from its bytes (not its suffix): a torch.export archive, TorchScript,
a ``torch.save`` zip, a truncated zip, or something else.

Nothing is unpickled or executed here; :mod:`.unpickle` reads the file once its kind is known.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..core.errors import InputFileError

__all__ = ["FILE_KINDS", "check_file", "sniff"]

#: what :func:`sniff` answers
FILE_KINDS = ("pt2", "torchscript", "zip", "truncated_zip", "other")


def check_file(path: Path) -> None:
    """Raise unless ``path`` is a readable, non-empty regular file.

    Raises:
        InputFileError: missing, a directory, unreadable, or empty (0 bytes).
    """
    if not path.exists():
        raise InputFileError(f"model file not found: {path}")
    if path.is_dir():
        raise InputFileError(
            f"{path} is a directory, not a model file",
            "pass the .pt2 / .pth file itself",
        )
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputFileError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise InputFileError(f"{path} is empty (0 bytes)", "the download or save did not complete")


def sniff(path: Path) -> str:
    """'pt2', 'torchscript', 'zip' (torch.save archive), 'truncated_zip' or 'other'."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if not zipfile.is_zipfile(path):  # also False for a zip without its central directory
            return "truncated_zip" if magic == b"PK\x03\x04" else "other"
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return "truncated_zip"
    base = {n.split("/", 1)[1] if "/" in n else n for n in names}
    # "archive_format": torch >= 2.6; "serialized_exported_program.json": older torch.export.save
    if "archive_format" in base or "serialized_exported_program.json" in base:
        return "pt2"
    if "constants.pkl" in base or any(b.startswith("code/") for b in base):
        return "torchscript"
    return "zip"
