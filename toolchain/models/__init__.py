"""Model zoo, architecture registry and the model loader (stage 1).

Importing this package registers every zoo architecture (see :mod:`.registry`).
"""

from . import cifar_resnet, mobilenet_v2, resnet, tiny  # noqa: F401  (registers the archs)
from .registry import ArchSpec, get_arch, list_archs, register_arch

__all__ = ["ArchSpec", "get_arch", "list_archs", "register_arch"]
