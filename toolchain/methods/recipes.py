"""Recipes: TOML files with one table of method settings per budget (``paper``, ``cpu``, …).

``recipes/<method>.toml``::

    [cpu]                 # minutes on two CPU cores
    iterations = 200
    [paper]               # the published schedule (a GPU)
    iterations = 500

Parsed with the standard library's tomllib. Lookup order: an explicit ``--recipe FILE``,
``$ZQTOOL_RECIPES/<method>.toml``, then the project's ``recipes/`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore

from ..errors import ConfigError

BUDGETS = ("cpu", "paper")
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def recipe_path(method: str, path: str | Path | None = None) -> Path | None:
    if path is not None:
        return Path(path)
    env = os.environ.get("ZQTOOL_RECIPES")
    for d in ([Path(env)] if env else []) + [RECIPES_DIR]:
        p = d / f"{method}.toml"
        if p.is_file():
            return p
    return None


def load_recipe(method: str, budget: str = "cpu", path: str | Path | None = None) -> dict:
    """The settings of ``method`` for ``budget`` (a dict; empty when the method has no recipe file).

    Raises:
        ConfigError: the file is missing/unreadable/not TOML, or has no table ``[budget]``.
    """
    p = recipe_path(method, path)
    if p is None:
        return {}
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"recipe file {p} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read recipe {p}: {e}") from None
    if budget not in data:
        raise ConfigError(f"recipe {p} has no [{budget}] table",
                          f"budgets defined there: {', '.join(k for k, v in data.items() if isinstance(v, dict))}")
    return dict(data[budget])


def parse_overrides(items: list[str] | None) -> dict:
    """``["lr=0.1", "iterations=50"]`` → ``{"lr": "0.1", ...}`` (typed later by the config)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
