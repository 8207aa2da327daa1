"""The grid a compare runs: ``--methods``, ``--bits``, ``--threads`` and ``--set`` parsed and checked
(every value is refused with a one-line :class:`~toolchain.core.errors.ConfigError` before any work)."""

from __future__ import annotations

from typing import Iterable, Sequence

from ..core.errors import ConfigError


def _items(text: str | Sequence, name: str) -> list[str]:
    raw = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    items = [t.strip() for t in raw if t.strip()]
    if not items:
        raise ConfigError(f"--{name} needs at least one value", f"e.g. --{name} " +
                          {"methods": "minmax,bnstat", "bits": "8,4", "threads": "1,2"}.get(name, "a,b"))
    return list(dict.fromkeys(items))  # de-duplicated, order kept


#: ``METHOD+STEP[+STEP]`` in ``--methods``: the method ending with those post-steps, a row of its own
#: beside the plain method's: a block reconstruction (``--set reconstruct=…``) or a :data:`POST_STEPS` name
VARIANT_SEP = "+"

#: the post-steps a ``--methods`` entry names besides a reconstruction → the setting each implies
POST_STEPS = {"bc": ("bias_correction", "true")}


def method_of(entry: str) -> str:
    """The registered method of a ``--methods`` entry: ``"bnstat+adaround"`` → ``"bnstat"``."""
    return entry.split(VARIANT_SEP, 1)[0]


def entry_settings(entry: str) -> dict[str, str]:
    """The settings a ``--methods`` entry implies: ``{"reconstruct": "adaround"}`` for
    ``"bnstat+adaround"``, ``{"bias_correction": "true", "reconstruct": "adaround"}`` for
    ``"bnstat+bc+adaround"``, ``{}`` for a plain method."""
    out: dict[str, str] = {}
    for part in entry.split(VARIANT_SEP)[1:]:
        key, value = POST_STEPS.get(part, ("reconstruct", part))
        out[key] = value
    return out


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"minmax,bnstat,bnstat+adaround"`` → ``["minmax", "bnstat", "bnstat+adaround"]``, each a
    registered method, optionally ``+`` post-steps: ``bc`` (bias correction) and/or a block
    reconstruction (:data:`~toolchain.methods.reconstruct.RECONSTRUCTIONS`).

    Raises:
        ConfigError: an empty list, a name that is not registered or an unknown post-step (the
        message lists the choices).
    """
    from ..methods.reconstruct import RECONSTRUCTIONS
    from ..methods.registry import list_methods
    methods = _items(text, "methods")
    known = list_methods()
    unknown = [m for m in methods if method_of(m) not in known]
    if unknown:
        raise ConfigError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"in --methods", f"available: {', '.join(known)}")
    steps = [*POST_STEPS, *(r for r in RECONSTRUCTIONS if r != "none")]
    for m in methods:
        r = entry_settings(m).get("reconstruct")
        if r is not None and r not in steps:
            raise ConfigError(f"unknown post-step {r!r} in --methods entry {m!r}",
                              f"METHOD{VARIANT_SEP}STEP with STEP one of: {', '.join(steps)} "
                              f"(e.g. bnstat{VARIANT_SEP}{steps[0]}{VARIANT_SEP}{steps[-1]})")
    return methods


def _ints(text: str | Sequence, name: str, lo: int, hi: int | None) -> list[int]:
    out = []
    for t in _items(text, name):
        try:
            v = int(t)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ConfigError(f"--{name} expects comma-separated integers in {rng}, got {t!r}",
                              f"e.g. --{name} " + ("8,6,4,3" if name == "bits" else "1,2"))
        out.append(v)
    return out


def parse_bits(text: str | Sequence) -> list[int]:
    """``"8,6,4,3"`` → ``[8, 6, 4, 3]`` (weights = activations). Raises ConfigError outside 2..8."""
    from ..quant.scheme import MAX_BITS, MIN_BITS
    return _ints(text, "bits", MIN_BITS, MAX_BITS)


def parse_threads(text: str | Sequence) -> list[int]:
    """``"1,2"`` → ``[1, 2]``: onnxruntime intra-op thread counts to verify at (0 = onnxruntime's
    default, all cores, as for ``verify``). Raises ConfigError."""
    return _ints(text, "threads", 0, None)


def parse_size_budgets(text: str | Sequence | None) -> list[float]:
    """``"0.6,0.5"`` → ``[0.6, 0.5]``: the ``--size-budget`` fractions a compare adds mixed-precision rows
    for (none for None or an empty string).

    Raises:
        ConfigError: a value that is not a number in (0, 1].
    """
    from ..quant.allocate import check_size_budget
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    items = [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    return list(dict.fromkeys(check_size_budget(t) for t in items))


def split_overrides(items: Iterable[str] | None, methods: Sequence[str]) -> dict[str, dict]:
    """Route ``--set`` items to methods: ``METHOD.key=value`` sets ``key`` of that method only;
    ``key=value`` sets it on every listed method whose config has ``key``; ``mp.key=value`` (a
    mixed-precision setting, :mod:`toolchain.methods.sensitivity`) goes to every method's runs as is.
    A method-specific value wins over a plain one, and an entry's own settings
    (:func:`entry_settings`, ``bnstat+adaround``) win over both. Items for a registered method not in
    ``methods`` are ignored (so a script may keep them while its method list is overridden);
    ``METHOD.key`` applies to every entry of that method (``bnstat`` and ``bnstat+adaround``).

    Returns:
        ``{entry: {key: value-string}}`` for every entry in ``methods``.

    Raises:
        ConfigError: not ``key=value``; an unregistered METHOD prefix; a plain key that no listed
        method has.
    """
    from ..methods.config import accepts, parse_overrides
    from ..methods.registry import get_method, list_methods
    per: dict[str, dict] = {m: {} for m in methods}
    plain, specific = {}, []
    for k, v in parse_overrides(list(items or [])).items():
        if k.startswith("mp."):
            for m in methods:
                per[m][k] = v
        elif "." in k and k.split(".", 1)[0] in list_methods():
            specific.append((k, v))
        else:
            plain[k] = v
    for k, v in plain.items():
        takers = [m for m in methods if accepts(get_method(method_of(m)).Config, k)]
        if not takers:
            raise ConfigError(f"--set {k}={v}: none of {', '.join(methods)} has a setting {k!r}",
                              "use --set METHOD.key=value for one method (a METHOD is one of: "
                              f"{', '.join(list_methods())}); `zqtool list methods` names them")
        for m in takers:
            per[m][k] = v
    for k, v in specific:
        m, key = k.split(".", 1)
        for entry in methods:
            if method_of(entry) == m:
                per[entry][key] = v
    for entry in methods:
        per[entry].update(entry_settings(entry))
    return per
