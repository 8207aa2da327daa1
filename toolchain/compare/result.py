"""What a compare writes to ``compare.json``: :class:`CompareResult` (settings, environment, rows)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..verify.results import Record, omitted_if_none
from .row import CompareRow

JSON_NAME, MD_NAME, PNG_NAME, REPORTS_DIR = "compare.json", "compare.md", "compare.png", "reports"


@dataclass(frozen=True)
class CompareSettings(Record):
    """The options a compare ran with (``compare.json``'s ``settings``); ``overrides`` is
    ``{method: {key: value}}``, ``store`` the artifact store's root; ``size_budgets`` the
    ``--size-budget`` fractions of the mixed-precision rows (absent when none; ``format`` is then
    ``auto``: qdq, and the size model's file for those rows, unless ``--format`` was given)."""

    methods: tuple[str, ...]
    bits: tuple[int, ...]
    first_last_bits: int
    target: str | None
    budget: str
    overrides: dict[str, dict]
    seed: int
    device: str
    format: str
    threads: tuple[int, ...]
    limit: int | None
    latency_runs: int
    parity_images: int
    store: str
    size_budgets: tuple[float, ...] | None = omitted_if_none()


@dataclass(frozen=True)
class CompareResult(Record):
    """The whole ``compare.json``: ``rows`` (one :class:`~.row.CompareRow` per pair, in grid order),
    ``complete`` once every pair ran, ``wall_s`` (seconds of this invocation, None until it ends),
    ``outputs`` (``json`` / ``md`` / ``png`` paths), ``plot`` (the PNG path or None) and
    ``warnings`` (one line each)."""

    model: str
    model_name: str
    data: str
    command: str | None
    settings: CompareSettings
    environment: dict[str, Any]
    rows: tuple[CompareRow, ...]
    complete: bool = False
    wall_s: float | None = None
    plot: str | None = None
    outputs: dict[str, str] | None = None
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> list[CompareRow]:
        return [r for r in self.rows if r.status == "failed"]


def environment() -> dict[str, Any]:
    """Versions and machine: python, torch, onnxruntime, onnx, zqtool, platform, CPU model, cores."""
    from importlib import metadata

    from .. import __version__
    env = {"python": platform.python_version()}
    for pkg in ("torch", "onnxruntime", "onnx"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    env["zqtool"] = __version__
    env["platform"] = platform.platform()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env["cpu"] = cpu
    env["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return env
