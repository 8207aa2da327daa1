"""Model zoo, architecture registry and the model loader (stage 1).

:mod:`.loader` (``load_model``) reads a user's file through :mod:`.sniff`, :mod:`.unpickle`,
:mod:`.fitting` and :mod:`.dynamic_batch`. The model card it writes lives in the torch-free
:mod:`toolchain.core.meta`; nothing torch-free imports this package. Importing it imports
nothing heavy: the zoo architectures are registered on first use of :func:`get_arch` /
:func:`list_archs`.
"""

__all__ = ["ArchSpec", "get_arch", "list_archs", "register_arch"]


def __getattr__(name):
    if name in __all__:
        from . import registry
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
