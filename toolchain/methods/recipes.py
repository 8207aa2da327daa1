"""Recipes: TOML files with one table of method settings per budget (``paper``, ``cpu``, …).

``recipes/<method>.toml``::

    [cpu]                 # minutes on two CPU cores
    calibration = "mse"
    [cpu.synthesis]       # the config's ``synthesis`` group
    iterations = 200
    [paper]               # the published schedule (a GPU)
    calibration = "mse"
    [paper.synthesis]
    iterations = 500

Parsed with the standard library's tomllib. Lookup order: an explicit ``--recipe FILE``,
``$ZQTOOL_RECIPES/<method>.toml``, then the recipes that ship inside the package
(``recipes/`` in the repository, installed as ``toolchain.recipes`` and read with
``importlib.resources``, so a wheel has them too). A method without a recipe, or a recipe
without the budget's table, is an error — never a silent fallback to the dataclass defaults.
A budget table's sub-tables (``[cpu.synthesis]``) fill the config's groups of settings; the values
are typed and checked by the config (:func:`~.config.build_config`).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore

from ..core.errors import ConfigError

BUDGETS = ("cpu", "paper")
#: the package the shipped recipes are installed as (setuptools maps it to the top-level recipes/)
RECIPES_PACKAGE = "toolchain.recipes"


def _shipped(method: str):
    try:
        r = resources.files(RECIPES_PACKAGE) / f"{method}.toml"
    except ModuleNotFoundError:
        return None
    return r if r.is_file() else None


def recipe_path(method: str, path: str | Path | None = None):
    """Where ``method``'s recipe is read from: ``path``, ``$ZQTOOL_RECIPES/<method>.toml``, or the
    shipped one (a ``Path`` or an importlib.resources ``Traversable``); None when there is none."""
    if path is not None:
        return Path(path)
    env = os.environ.get("ZQTOOL_RECIPES")
    if env and (Path(env) / f"{method}.toml").is_file():
        return Path(env) / f"{method}.toml"
    return _shipped(method)


def recipe_origin(method: str, path: str | Path | None = None) -> str:
    """A readable name of the recipe file used (for logs): a path, or ``toolchain.recipes/<method>.toml``."""
    p = recipe_path(method, path)
    if p is None:
        return "none"
    if isinstance(p, Path):
        return str(p)
    return f"{RECIPES_PACKAGE}/{method}.toml"


def load_recipe(method: str, budget: str = "cpu", path: str | Path | None = None) -> dict:
    """The settings of ``method`` for ``budget`` (a dict).

    Raises:
        ConfigError: no recipe for the method, the file is missing/unreadable/not TOML, or it has
            no table ``[budget]``.
    """
    p = recipe_path(method, path)
    if p is None:
        raise ConfigError(f"no recipe for method {method!r} (looked in $ZQTOOL_RECIPES and the installed "
                          f"{RECIPES_PACKAGE})", "reinstall zqtool, or pass --recipe FILE")
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"recipe file {p} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read recipe {p}: {e}") from None
    if budget not in data:
        raise ConfigError(f"recipe {recipe_origin(method, path)} has no [{budget}] table",
                          f"budgets defined there: {', '.join(k for k, v in data.items() if isinstance(v, dict))}")
    return dict(data[budget])
