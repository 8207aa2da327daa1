"""Model zoo, architecture registry and the model loader (stage 1).

Importing this package imports nothing heavy, so :mod:`.meta` (the model card) stays
usable where torch is not installed (stage 4 on a device). The zoo architectures are
registered on first use of :func:`get_arch` / :func:`list_archs`.
"""

__all__ = ["ArchSpec", "get_arch", "list_archs", "register_arch"]


def __getattr__(name):
    if name in __all__:
        from . import registry
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
