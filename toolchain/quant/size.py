"""How many bytes a quantized model's file holds for a choice of per-layer weight widths: the size
model of mixed precision (:mod:`toolchain.methods.sensitivity`, ``--size-budget``). torch-free.

What the exported files store (:mod:`toolchain.export.onnx_writer`, measured in
``tests/test_mixed_precision.py``):

- ``qdq`` (opset 13): every weight code in an 8-bit container, whatever its width — a 4-bit model's
  file is as large as the 8-bit one's;
- ``int4`` (opset 21): codes of weights of ≤ 4 bits as ONNX INT4, two a byte; 5..8-bit codes one
  byte each (ONNX has no 5..7-bit types).

Besides the weight codes a file holds per-channel scales, int32 biases, the bias scales, zero points,
activation grids, the graph and the model card; none of that depends on the weight widths. So the
bytes of a model are ``fixed + Σ code_bytes(n_l, b_l)`` over its Conv/Linear layers ``l`` (``n_l``
weight codes at ``b_l`` bits), and ``fixed`` is measured once on a real file: the all-8-bit model
written in the size model's ``file_format`` (:func:`fixed_bytes`) — so the reference of a budget is
that file's bytes. The estimate matches the written file to within the few bytes of the shared
zero-point tensors (one per channel count and type; ``tests/test_mixed_precision.py`` checks it).

Size models (:data:`SIZE_MODELS`, a registry; ``--set mp.size_model=NAME``):

- ``int4`` (default): the bytes of the ``int4`` file, the one a ``--size-budget`` run exports; only
  ≤ 4-bit widths save bytes (a 6-bit layer costs what an 8-bit one does);
- ``packed``: ``b / 8`` bytes per ``b``-bit code, the model size HAWQ-V3 and ZeroQ report (a runtime
  with bit-packed weights); no ONNX file stores 5..7-bit codes that way, so the budget is then a
  count, not a file's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..core.errors import ConfigError


def _int4_file_codes(n: int, bits: int) -> float:
    return float(-(-int(n) // 2) if bits <= 4 else int(n))


#: export format → (number of codes, bits) → bytes its file stores for one layer's weight codes
FILE_CODE_BYTES: dict[str, Callable[[int, int], float]] = {
    "qdq": lambda n, bits: float(n),
    "int4": _int4_file_codes,
}


@dataclass(frozen=True)
class SizeModel:
    """How a model's bytes are counted.

    Attributes:
        name: the ``mp.size_model`` value.
        description: one line (reports, docs).
        file_format: the export format (a key of :data:`FILE_CODE_BYTES`) whose all-8-bit file is the
            budget's reference and gives the fixed bytes.
        exported: whether a file zqtool writes (in ``file_format``) holds exactly these bytes; a
            ``--size-budget`` run then exports that format.
        code_bytes: (number of weight codes, bits) → bytes they count.
    """

    name: str
    description: str
    file_format: str
    exported: bool
    code_bytes: Callable[[int, int], float]

    def estimate(self, fixed: float, layers: Iterable[tuple[int, int]]) -> float:
        """``fixed + Σ code_bytes(n, bits)`` for ``layers`` of (number of weight codes, bits): the
        model's bytes (:func:`estimate_bytes`)."""
        return float(fixed) + sum(self.code_bytes(int(n), int(b)) for n, b in layers)


SIZE_MODELS: dict[str, SizeModel] = {}


def register_size_model(model: SizeModel) -> SizeModel:
    SIZE_MODELS[model.name] = model
    return model


register_size_model(SizeModel(
    "int4", "bytes of the int4 ONNX file (weights of <= 4 bits as INT4, two codes a byte; 5..8-bit codes "
    "a byte each)", "int4", True, _int4_file_codes))
register_size_model(SizeModel(
    "packed", "b/8 bytes per b-bit weight code (bit-packed, as HAWQ-V3 counts model size); the QDQ file "
    "itself keeps 8-bit containers", "qdq", False, lambda n, bits: int(n) * int(bits) / 8))
DEFAULT_SIZE_MODEL = "int4"


def get_size_model(name: str) -> SizeModel:
    """The registered size model ``name``. Raises ConfigError listing the registered ones."""
    try:
        return SIZE_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown size model {name!r}", f"choose one of {', '.join(SIZE_MODELS)}") from None


def fixed_bytes(model: SizeModel, file_bytes: int, layers: Iterable[tuple[int, int]]) -> float:
    """The bytes of a written file that are not weight codes.

    Args:
        model: the size model (its ``file_format`` is the format of the file measured).
        file_bytes: the size of that file, bytes (e.g. the all-8-bit model written in ``file_format``).
        layers: (number of weight codes, bits) of each Conv/Linear layer of the file's model.

    Returns:
        ``file_bytes − Σ`` the bytes ``file_format`` stores for each layer's codes (bytes, ≥ 0).
    """
    stored = FILE_CODE_BYTES[model.file_format]
    return float(file_bytes) - sum(stored(int(n), int(b)) for n, b in layers)


def estimate_bytes(model: SizeModel | str, fixed: float, layers: Iterable[tuple[int, int]]) -> float:
    """The bytes a model with these weight widths counts under ``model`` (a :class:`SizeModel` or its
    name): ``fixed`` (:func:`fixed_bytes`) plus each layer's codes.

    Args:
        model: the size model.
        fixed: the bytes that do not depend on the widths.
        layers: (number of weight codes, bits) per Conv/Linear layer — the width the codes have after the
            target's rule (e.g. 7 for "8" on ``portable``).

    Raises:
        ConfigError: an unknown size model name.
    """
    m = get_size_model(model) if isinstance(model, str) else model
    return m.estimate(fixed, layers)
