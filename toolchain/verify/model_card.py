"""Read the model card (:class:`~toolchain.models.meta.ModelMeta`) from an ONNX file's metadata.

Stage 3 writes the card into ``metadata_props`` (keys ``zqtool.<field>``, JSON values);
onnxruntime exposes them as ``custom_metadata_map``, so no ``onnx`` package is needed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..errors import InputFileError, ZqError

_META_FILE = Path(__file__).resolve().parents[1] / "models" / "meta.py"
_PRIVATE_NAME = "toolchain.verify._model_meta"


def model_meta_module() -> ModuleType:
    """The module defining ``ModelMeta``, imported without importing torch.

    ``toolchain/models/__init__.py`` imports the model zoo (torch), and importing
    ``toolchain.models.meta`` runs it. So unless ``toolchain.models`` is already
    loaded (then its ``meta`` is reused, keeping one ``ModelMeta`` class), the file
    ``toolchain/models/meta.py`` is loaded by path under a private module name. It
    imports only the standard library and ``toolchain.errors``.
    """
    mod = sys.modules.get("toolchain.models.meta") or sys.modules.get(_PRIVATE_NAME)
    if mod is not None:
        return mod
    if "toolchain.models" in sys.modules:
        from ..models import meta

        return meta
    spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, _META_FILE)
    if spec is None or spec.loader is None or not _META_FILE.is_file():
        raise ImportError(f"cannot find {_META_FILE}: copy toolchain/models/meta.py with the package")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE_NAME] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[_PRIVATE_NAME]
        raise
    return mod


def read_model_meta(props: dict[str, str], path: str | Path):
    """Build the ModelMeta stored in an ONNX model's metadata.

    Args:
        props: the model's ``metadata_props`` as a dict (e.g. onnxruntime's
            ``session.get_modelmeta().custom_metadata_map``).
        path: the model file, for messages.

    Returns:
        ModelMeta (input_shape (C, H, W), mean, std, num_classes, resize, ...).

    Raises:
        InputFileError: the model carries no ``zqtool.*`` metadata, or it is malformed.
    """
    mod = model_meta_module()
    prefix = mod.ONNX_META_PREFIX
    if not any(k.startswith(prefix) for k in props):
        raise InputFileError(
            f"{path} carries no zqtool model card (no '{prefix}*' metadata): "
            "input size, normalization and class count are unknown",
            "export the model with `zqtool export`, which writes the card into the ONNX metadata",
        )
    try:
        return mod.ModelMeta.from_onnx_props(props)
    except ZqError as e:
        raise InputFileError(f"{path}: invalid zqtool model card: {e.message}",
                             "re-export the model with `zqtool export`") from None
    except (TypeError, ValueError) as e:
        raise InputFileError(f"{path}: invalid zqtool model card ({str(e).splitlines()[0]})",
                             "re-export the model with `zqtool export`") from None
