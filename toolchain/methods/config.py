"""Method settings: declared once on a frozen dataclass, checked in one place.

A method's ``Config`` (and every sub-config it holds) is a frozen dataclass deriving from
:class:`Settings`. A field is either

- a *leaf* of type ``int``, ``float``, ``bool`` or ``str``, declared with :func:`setting`, whose
  metadata says what values it takes (``choices``; ``ge``/``gt``/``le``/``lt`` bounds; ``odd``;
  ``aliases`` — other spellings of a choice), or
- a *group*: a nested :class:`Settings` dataclass, declared with :func:`group` (e.g.
  ``synthesis: SynthesisConfig = group(SynthesisConfig, iterations=250)``).

Cross-field constraints are :class:`Rule` entries in the class's ``rules``. ``Settings.__post_init__``
runs :func:`check`: it converts each leaf to its declared type (``"50"`` → 50 for an int field,
``"true"`` → True, 1 → 1.0 for a float field), then applies the metadata and the rules. So a
config built from a recipe, from ``--set`` strings or directly in Python is checked the same way.

Values reach a config through :func:`build_config` in layers, later layers winning: a recipe
table (a TOML sub-table ``[cpu.synthesis]`` fills the ``synthesis`` group), then overrides
(``--set``: :func:`parse_overrides`). A key is a dotted path (``synthesis.iterations``) or the bare
name of a leaf (``iterations``) when exactly one leaf of the config has that name.

Every bad key or value raises :class:`SettingError` (a ``ConfigError``), one format:
``bad setting 'KEY' for OWNER: PROBLEM`` plus a hint (the known keys, the dotted spellings of an
ambiguous one).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable, ClassVar, NamedTuple

from ..core.errors import ConfigError

LEAF_TYPES = (int, float, bool, str)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingError(ConfigError):
    """A bad setting key or value: ``bad setting 'KEY' for OWNER: PROBLEM`` (+ hint).

    Attributes:
        key: the dotted path of the setting (or the key as given, when unknown).
        problem: what is wrong with it, e.g. ``must be >= 2, got 1``.
        owner: the config it was checked against (a method name or a class name).
    """

    def __init__(self, key: str, problem: str, hint: str | None = None, owner: str | None = None):
        self.key, self.problem, self.owner = key, problem, owner
        where = f" for {owner}" if owner else ""
        super().__init__(f"bad setting {key!r}{where}: {problem}", hint)

    def placed(self, prefix: str = "", owner: str | None = None) -> "SettingError":
        """The same error with ``prefix.`` put before its key and ``owner`` (if given) as its owner."""
        return SettingError(f"{prefix}.{self.key}" if prefix else self.key, self.problem, self.hint,
                            owner or self.owner)


class Rule(NamedTuple):
    """A constraint between fields: ``ok(config)`` must hold, else ``problem`` about ``keys``."""

    keys: str
    ok: Callable[[Any], bool]
    problem: str


def setting(default: Any, *, choices: tuple | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, odd: bool = False,
            aliases: dict[str, str] | None = None) -> Any:
    """A leaf field with its default and the values it accepts (checked by :func:`check`).

    Args:
        default: the value when neither recipe nor override sets it.
        choices: the allowed values (strings).
        ge, gt, le, lt: inclusive / exclusive lower and upper bounds.
        odd: the value must be an odd integer.
        aliases: other spellings (lower-case) mapped to a choice, e.g. ``{"true": "on"}``.
    """
    meta = {k: v for k, v in dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, odd=odd or None,
                                   aliases=aliases).items() if v is not None}
    return dataclasses.field(default=default, metadata=meta)


def group(cls: type, **defaults) -> Any:
    """A nested settings field: a ``cls`` instance, with ``defaults`` instead of ``cls``'s own."""
    return dataclasses.field(default_factory=functools.partial(cls, **defaults))


@functools.lru_cache(maxsize=None)
def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_group(typ: Any) -> bool:
    return isinstance(typ, type) and dataclasses.is_dataclass(typ)


def _coerce(value: Any, typ: type, meta, key: str):
    """``value`` as ``typ`` (strings parsed, ints widened to float), else SettingError."""
    if meta.get("aliases") is not None and isinstance(value, (str, bool, int)):
        s = str(value).lower()
        value = meta["aliases"].get(s, s)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise SettingError(key, f"expects true or false, got {value!r}")
    if typ in (int, float) and not isinstance(value, bool):
        if isinstance(value, typ):
            return value
        if typ is float and isinstance(value, int):
            return float(value)
        if typ is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return typ(value.strip())
            except ValueError:
                pass
    if typ is str and isinstance(value, str):
        return value
    name = {int: "an int", float: "a number", str: "a string"}.get(typ, typ.__name__)
    raise SettingError(key, f"expects {name}, got {value!r}")


def _problem(value, meta) -> str | None:
    """What is wrong with an (already typed) ``value`` under a field's metadata, or None."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    for bound, test, text in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        b = meta.get(bound)
        if b is not None and not test(value, b):  # NaN fails every bound
            return f"must be {text} {b:g}, got {value!r}"
    if meta.get("odd") and value % 2 != 1:
        return f"must be odd, got {value!r}"
    return None


def check(cfg: Any) -> None:
    """Type and check every leaf of a settings dataclass (in place: frozen fields are set through
    ``object.__setattr__``), then its :class:`Rule` s. Groups are checked when they are built.

    Raises:
        SettingError: the first bad field (its key relative to ``cfg``).
    """
    owner = type(cfg).__qualname__
    types = _types(type(cfg))
    for f in dataclasses.fields(cfg):
        typ, value = types[f.name], getattr(cfg, f.name)
        if _is_group(typ):
            if not isinstance(value, typ):
                raise SettingError(f.name, f"expects a {typ.__qualname__} (a table of settings), got {value!r}",
                                   owner=owner)
            continue
        if typ not in LEAF_TYPES:
            raise TypeError(f"{owner}.{f.name}: settings are int, float, bool, str or a Settings group")
        try:
            typed = _coerce(value, typ, f.metadata, f.name)
        except SettingError as e:
            raise e.placed(owner=owner) from None
        problem = _problem(typed, f.metadata)
        if problem:
            raise SettingError(f.name, problem, owner=owner)
        if typed is not value:
            object.__setattr__(cfg, f.name, typed)
    for rule in type(cfg).rules:
        if not rule.ok(cfg):
            raise SettingError(rule.keys, rule.problem, owner=owner)


class Settings:
    """Base of every method config and sub-config: frozen dataclasses whose fields are declared
    with :func:`setting` / :func:`group`; construction runs :func:`check`."""

    rules: ClassVar[tuple[Rule, ...]] = ()

    def __post_init__(self):
        check(self)


# ----------------------------------------------------------------------------- keys
@functools.lru_cache(maxsize=None)
def leaf_paths(cls: type) -> tuple[str, ...]:
    """Every leaf of ``cls`` as a dotted path, in declaration order (``("calibration",
    "synthesis.num_images", …)``)."""
    out = []
    for f in dataclasses.fields(cls):
        typ = _types(cls)[f.name]
        out += [f"{f.name}.{p}" for p in leaf_paths(typ)] if _is_group(typ) else [f.name]
    return tuple(out)


def _group_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if _is_group(_types(cls)[f.name])}


def resolve_key(cls: type, key: str, owner: str | None = None) -> str:
    """The dotted path ``key`` names in ``cls``: itself, or the one leaf whose name is ``key``.

    Raises:
        SettingError: no such setting (hint: the known ones) or a bare name several leaves have.
    """
    paths = leaf_paths(cls)
    if key in paths:
        return key
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == key] if "." not in key else []
    if len(matches) == 1:
        return matches[0]
    owner = owner or cls.__qualname__
    if matches:
        raise SettingError(key, f"ambiguous, {len(matches)} settings have that name",
                           f"say which: {' or '.join(matches)}", owner)
    raise SettingError(key, "unknown setting", f"known: {', '.join(sorted(paths))}", owner)


def accepts(cls: type, key: str) -> bool:
    """Whether ``key`` names a setting of ``cls`` (a dotted path or a leaf's bare name, even an
    ambiguous one — :func:`build_config` then says which paths it could mean)."""
    return key in leaf_paths(cls) or any(p.rsplit(".", 1)[-1] == key for p in leaf_paths(cls))


def flatten(cls: type, values: dict, owner: str | None = None) -> dict[str, Any]:
    """``values`` (nested tables for groups, dotted or bare keys) as ``{dotted path: value}``.

    Raises:
        SettingError: an unknown or ambiguous key, or a table given for a leaf.
    """
    out: dict[str, Any] = {}
    groups = _group_names(cls)
    for k, v in values.items():
        if isinstance(v, dict):
            if k not in groups:
                raise SettingError(k, "is a table, but no group of settings has that name",
                                   f"groups: {', '.join(sorted(groups)) or 'none'}", owner or cls.__qualname__)
            sub = _types(cls)[k]
            try:
                out.update({f"{k}.{p}": x for p, x in flatten(sub, v, owner).items()})
            except SettingError as e:
                raise e.placed(k, owner) from None
            continue
        out[resolve_key(cls, k, owner)] = v
    return out


def build_config(cls: type, *layers: dict, owner: str | None = None):
    """A ``cls`` instance from ``layers`` of settings (each as :func:`flatten` takes; a later
    layer's value wins), every other field at its default.

    Args:
        cls: a :class:`Settings` dataclass (a method's ``Config``).
        layers: e.g. the recipe's budget table, then the ``--set`` overrides.
        owner: the name errors give (default: ``cls``'s qualified name).

    Raises:
        SettingError: an unknown/ambiguous key or a bad value (of the one format above).
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(flatten(cls, layer or {}, owner))
    return _construct(cls, merged, owner or cls.__qualname__, "")


def _construct(cls: type, flat: dict[str, Any], owner: str, prefix: str):
    kw: dict[str, Any] = {}
    types = _types(cls)
    for f in dataclasses.fields(cls):
        if _is_group(types[f.name]):
            sub = {p[len(f.name) + 1:]: v for p, v in flat.items() if p.startswith(f"{f.name}.")}
            if sub:
                base = dataclasses.asdict(f.default_factory()) if f.default_factory is not dataclasses.MISSING \
                    else {}
                kw[f.name] = _construct(types[f.name], {**_flat_dict(base), **sub}, owner, f"{prefix}{f.name}.")
        elif f.name in flat:
            kw[f.name] = flat[f.name]
    try:
        return cls(**kw)
    except SettingError as e:
        raise e.placed(prefix.rstrip("."), owner) from None


def _flat_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["lr=0.1", "synthesis.iterations=50"]`` → ``{"lr": "0.1", …}`` (typed later by the config).

    Raises:
        ConfigError: an item without ``=``.
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}",
                              "e.g. --set iterations=50 (or a dotted key: --set synthesis.iterations=50)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
