"""Content-keyed, atomically written stage artifacts.

A stage's output lives in ``<root>/<stage>/<key>/`` where ``key`` hashes everything the
output depends on (input artifact key, method, full config, seed, tool version). A stage
whose directory exists is complete and is reused; work happens in a temporary sibling
directory renamed into place at the end, so an interrupted stage leaves no half-written
artifact. Each directory holds ``config.json`` saying how it was made. The keys themselves
(:func:`~toolchain.core.keys.content_key`) are computed in the torch-free core.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .core.keys import content_key, file_sha256  # noqa: F401  (shim: import them from core.keys)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside ``path`` to fill; on success it becomes ``path`` (an empty
    folder there is replaced), on any exception it is removed and nothing is left at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.is_dir():
            path.rmdir()  # only an empty folder: callers refuse a non-empty one
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``
    (os.replace), on any exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same directory + os.replace)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON value stored in ``path`` (UTF-8)."""
    return json.loads(Path(path).read_text())


class Store:
    """The run root: ``<root>/<stage>/<key>/`` directories."""

    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "config.json").is_file()

    @contextlib.contextmanager
    def build(self, stage: str, key: str, config: dict):
        """Yield a temporary directory to fill; on success it becomes ``<root>/<stage>/<key>``.

        ``config.json`` is written last. On any exception the temporary directory is removed
        (nothing half-written remains) and the exception propagates.
        """
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{key}-"))
        try:
            yield tmp
            write_json(tmp / "config.json", {"stage": stage, "key": key, "zqtool": __version__, **config})
            if final.exists():  # a concurrent run finished first: keep theirs
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
