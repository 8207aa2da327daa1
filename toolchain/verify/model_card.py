"""Read the model card (:class:`~toolchain.core.meta.ModelMeta`) from an ONNX file's metadata.

Stage 3 writes the card into ``metadata_props`` (keys ``zqtool.<field>``, JSON values);
onnxruntime exposes them as ``custom_metadata_map``, so no ``onnx`` package is needed.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..core.errors import InputFileError, ZqError


def model_meta_module() -> ModuleType:
    """The module defining ``ModelMeta`` (imports only the standard library; torch-free)."""
    from ..core import meta

    return meta


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
