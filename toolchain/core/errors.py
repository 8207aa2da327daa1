"""User-facing errors.

Every failure a user can cause (a missing file, a model that does not fit the
architecture, a bad option) is raised as a :class:`ZqError`. The CLI prints its
message and hint on one or two lines and exits with ``exit_code``; it never
shows a traceback for these. Code raises the most specific subclass.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "InputFileError", "ModelMismatchError", "UnsafeModelError",
           "UnsupportedModelError", "ZqError", "first_line"]


class ZqError(Exception):
    """Base class of errors meant for the user.

    Args:
        message: what was wrong, in one line (no trailing period needed).
        hint: what to do about it, in one line; optional.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InputFileError(ZqError):
    """A user's file is missing, unreadable, truncated, corrupt or of the wrong kind."""


class ModelMismatchError(ZqError):
    """A state_dict does not fit the named architecture (missing/unexpected/mis-shaped keys)."""


class UnsafeModelError(ZqError):
    """Loading the file would run code from it (pickled nn.Module) and --trust-pickle was not given."""


class UnsupportedModelError(ZqError):
    """The model cannot be traced, rewritten or exported (e.g. an operator we do not support)."""


class ConfigError(ZqError):
    """A bad option, recipe entry or combination of options."""


class DataError(ZqError):
    """An evaluation data set is missing or malformed."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (stripped), or its type name: how a
    third-party exception (torch, zip, pickle) is quoted inside a one-line :class:`ZqError`."""
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__
