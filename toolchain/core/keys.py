"""Content keys and file hashes: what names a stage artifact (``<root>/<stage>/<key>/``).

A key hashes everything a stage's output depends on (input artifact key, method, full config,
seed, tool version), so the same inputs find the same folder and any change makes a new one.
Standard library only (torch-free).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = ["KEY_LEN", "canonical_json", "content_key", "file_sha256"]

#: hex characters of a content key
KEY_LEN = 16


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces (non-JSON values as ``str``): the text a key hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(payload: dict) -> str:
    """sha256 (hex, first 16 characters) of the canonical JSON of ``payload`` + tool version."""
    body = canonical_json({"zqtool": __version__, **payload})
    return hashlib.sha256(body.encode()).hexdigest()[:KEY_LEN]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, streamed.

    Raises:
        OSError: the file cannot be opened or read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
