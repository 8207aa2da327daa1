"""Reading a model file with torch: ``torch.export.load`` for a ``.pt2`` archive, and ``torch.load``
with ``weights_only=True`` for anything else, falling back to full unpickling (which runs code
from the file) only when the caller trusts it.

Every torch/zip/pickle failure becomes one :class:`~toolchain.core.errors.InputFileError` or
:class:`~toolchain.core.errors.UnsafeModelError` with a hint.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..core.errors import InputFileError, UnsafeModelError, first_line

__all__ = ["corrupt_file_error", "load_pt2", "torch_load"]

#: how torch names the first global a weights_only load refused
_DISALLOWED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")


def load_pt2(path: Path) -> torch.export.ExportedProgram:
    """The ``ExportedProgram`` in a torch.export archive (no code from the file runs).

    Raises:
        InputFileError: the archive cannot be read, or holds something else.
    """
    try:
        with open(path, "rb") as f:  # a file object: torch.export.load checks the suffix of paths
            program = torch.export.load(f)
    except Exception as e:
        raise InputFileError(
            f"{path} looks like a torch.export archive but could not be read: {first_line(e)}",
            "re-save it with torch.export.save (same torch version if possible)",
        ) from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise InputFileError(f"{path} does not hold an ExportedProgram")
    return program


def torch_load(path: Path, trust_pickle: bool):
    """(object, unpickled) from torch.load; weights_only unless a disallowed global needs trust.

    Raises:
        UnsafeModelError: the file holds pickled Python objects and ``trust_pickle`` is False.
        InputFileError: truncated, corrupt, not a torch file, or a class that is not importable.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as e:
        m = _DISALLOWED_GLOBAL.search(str(e))
        # a pickle cut inside a GLOBAL opcode names a mangled global such as "torch._u."
        if m is None or not all(part.isidentifier() for part in m.group(1).split(".")):
            raise corrupt_file_error(path, e) from None
        what = m.group(1)
    except Exception as e:
        raise corrupt_file_error(path, e) from None
    if not trust_pickle:
        raise UnsafeModelError(
            f"{path} contains pickled Python objects (first: {what}); loading it would run code from the file",
            "pass --trust-pickle only if you trust the file; better, save a state_dict "
            "(torch.save(model.state_dict(), f)) or a torch.export archive (.pt2) instead",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False), True
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise InputFileError(
            f"cannot unpickle {path}: {first_line(e)}",
            "the model's class must be importable here; or save a state_dict or a .pt2 instead",
        ) from None
    except Exception as e:
        raise corrupt_file_error(path, e) from None


def corrupt_file_error(path: Path, e: BaseException) -> InputFileError:
    """The error for a file torch.load could not read, worded by what the exception says."""
    msg = first_line(e)
    if isinstance(e, EOFError) or "central directory" in msg or "not a ZIP" in msg:
        what = "is truncated or corrupt"
    elif isinstance(e, pickle.UnpicklingError):
        what = "is not a PyTorch model file (or is corrupt)"
    else:
        what = f"could not be read by torch.load ({type(e).__name__}: {msg[:160]})"
    return InputFileError(
        f"{path} {what}",
        "expected a torch.export archive (.pt2), a state_dict (.pt/.pth/.th) or a pickled nn.Module",
    )
