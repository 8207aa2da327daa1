"""Checkpoints of long method runs, for resume (ARCHITECTURE.md: "checkpoint periodically and resume").

A checkpoint is one ``torch.save`` file in the run's work directory (keyed by the run's
content key, so a re-run of the same command finds it). It holds whatever state dicts the
caller passes plus the RNG states of Python, NumPy and torch (CPU and CUDA), so that a
resumed run draws the same random numbers as an uninterrupted one. Writes are atomic
(temporary file, then ``os.replace``): an interrupted save leaves the previous checkpoint.
Everything is stored as tensors and plain Python values, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_VERSION = 1


def capture_rng() -> dict:
    """The RNG states of python ``random``, NumPy, torch CPU and (if present) every CUDA device."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """One checkpoint file ``<directory>/<name>``; a no-op when ``directory`` is None.

    Args:
        directory: the method's work directory (``MethodContext.workdir``) or None.
        name: file name.
        fingerprint: a JSON-able description of the run (e.g. the method config); a checkpoint
            with a different fingerprint is ignored on :meth:`load`.
    """

    def __init__(self, directory: str | Path | None, name: str = "checkpoint.pt", fingerprint=None):
        self.path = None if directory is None else Path(directory) / name
        self.fingerprint = fingerprint

    def exists(self) -> bool:
        return self.path is not None and self.path.is_file()

    def save(self, state: dict) -> None:
        """Write ``state`` (tensors, state dicts, plain Python values) plus the RNG states."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "rng": capture_rng(),
                    "state": state}, tmp)
        os.replace(tmp, self.path)

    def load(self, restore_random: bool = True) -> dict | None:
        """The saved state (RNG states restored unless told not to), or None when there is no
        usable checkpoint (absent, unreadable, other version or fingerprint)."""
        if not self.exists():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt file is no checkpoint: start over
            return None
        if blob.get("version") != CHECKPOINT_VERSION or blob.get("fingerprint") != self.fingerprint:
            return None
        if restore_random:
            restore_rng(blob["rng"])
        return blob["state"]

    def clear(self) -> None:
        """Delete the checkpoint (after the run finished)."""
        if self.path is not None:
            for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
                p.unlink(missing_ok=True)


class Resumable:
    """Mixin for long loops that checkpoint: ``state_dict()`` / ``load_state_dict()`` plus a
    :class:`Checkpointer` give :meth:`restore`. Subclasses set ``self.checkpointer`` and
    ``self.resumed_from = None`` and expose their progress counter as :attr:`position`.
    """

    checkpointer: "Checkpointer"
    resumed_from: int | None

    @property
    def position(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def restore(self) -> bool:
        """Load the checkpoint if there is one (RNG states included). Returns whether it did."""
        state = self.checkpointer.load()
        if state is None:
            return False
        self.load_state_dict(state)
        self.resumed_from = self.position
        return True

    def run_with_progress(self, progress, description: str, total: int) -> dict:
        """``self.run(task)`` under a progress task from ``progress(description, total)``, always closed."""
        task = progress(description, total)
        try:
            return self.run(task)
        finally:
            task.close()
