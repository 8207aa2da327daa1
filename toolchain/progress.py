"""Progress reporting: the stages take a ``progress(description, total) -> task`` factory.

The library never draws: the CLI passes :func:`rich_progress`'s factory, tests pass nothing
(:func:`null_progress`). A task has ``advance(n=1, **fields)`` (fields such as ``loss`` are
shown beside the bar) and ``close()``. :func:`say` prints a line above the bars (a plan, a note).
"""

from __future__ import annotations

import contextlib


class NullTask:
    def advance(self, n: int = 1, **fields):
        pass

    def close(self):
        pass


def null_progress(description: str, total: int | None = None) -> NullTask:
    return NullTask()


class _RichTask:
    def __init__(self, progress, description, total):
        self.p = progress
        self.id = progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **fields):
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self.p.update(self.id, advance=n, info=info)

    def close(self):
        self.p.update(self.id, visible=False)
        self.p.remove_task(self.id)


@contextlib.contextmanager
def rich_progress(console=None):
    """Context manager yielding a progress factory that draws rich bars (transient)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=console, transient=True) as p:
        def factory(description, total=None):
            return _RichTask(p, description, total)
        factory.say = p.console.print
        yield factory


def say(progress, message: str) -> None:
    """Print ``message`` above the bars of ``progress`` when it draws (its ``say``); else nothing."""
    fn = getattr(progress, "say", None)
    if fn is not None:
        fn(message)


def advance_hook(progress):
    """Adapt a progress factory to the ``hook(advance, total, description)`` callback that
    :func:`toolchain.verify.verify` takes: one task per description, created at its first call."""
    tasks: dict[str, object] = {}

    def hook(advance: int, total: int, description: str):
        task = tasks.get(description)
        if task is None:
            task = tasks[description] = progress(description, total)
        task.advance(advance)
    return hook
