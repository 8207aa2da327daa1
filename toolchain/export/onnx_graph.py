"""A small ONNX graph builder and the value model of the export walk.

:class:`GraphBuilder` accumulates nodes and initializers with unique names made
from the fx node / module path, so every ONNX node says which layer it came from.

:class:`Value` is what one fx node becomes in ONNX. A tensor can exist in two
forms: its float32 tensor, and — when it lies on the integer grid of an
activation quantizer — the integer-code tensor on that :class:`Grid` (uint8, or
uint4 in the ``int4`` format). The float form of a quantized value is made on
demand by one DequantizeLinear, so grid-preserving ops (reshape, slice, zero
padding, max pooling) can run on the codes and the DequantizeLinear lands right
in front of the compute op that consumes them (the QDQ pattern onnxruntime fuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..naming import unique_name


@dataclass(eq=False)
class Grid:
    """The integer grid of one per-tensor activation quantizer, as ONNX initializers.

    Attributes:
        path: the quantizer's module path (e.g. ``act_quant.layer1_0_conv1``).
        scale: name of the float32 scalar scale initializer.
        zero_point: name of the scalar zero-point initializer (uint8, or uint4 in ``int4``).
        zero_point_value: the zero point as an int.
        qmax: largest code (``2**bits - 1``); the smallest is 0.
        scale_value: the scale as a Python float (for metadata).
        code_type: ONNX element type of the codes (``TensorProto.UINT8`` / ``UINT4``).
    """

    path: str
    scale: str
    zero_point: str
    zero_point_value: int
    qmax: int
    scale_value: float
    code_type: int


@dataclass(eq=False)
class Value:
    """One fx node's result in the ONNX graph.

    One of these forms describes it:
    - a tensor: ``float`` (the plain tensor: float32 for activations, a get_attr constant
      keeps its dtype) and/or ``codes``, the integer codes on ``grid``. ``grid`` is set
      whenever the values lie on a quantizer's grid (also for a float tensor with no codes);
    - pending: a tensor ``base`` still to go through a grid-preserving shape op
      ``post(name) -> name`` (so a quantizer can act before e.g. a Squeeze and the
      Squeeze runs on its codes);
    - ``items``: a tuple result (for ``getitem``);
    - ``shape``: a symbolic integer as a 1-D int64 tensor of length 1.

    ``origin`` names the fx node / module that made the value; a DequantizeLinear made
    on demand is named ``<origin>.dq``.
    """

    float: str | None = None
    codes: str | None = None
    grid: Grid | None = None
    base: "Value | None" = None
    post: Callable[[str], str] | None = None
    items: tuple | None = None
    shape: str | None = None
    origin: str = ""

    def any_tensor(self) -> str | None:
        """A tensor with this value's shape (codes or float, whichever exists), or None."""
        return self.codes if self.codes is not None else self.float


_NP_TO_ONNX = {
    np.dtype("float32"): TensorProto.FLOAT,
    np.dtype("float64"): TensorProto.DOUBLE,
    np.dtype("int64"): TensorProto.INT64,
    np.dtype("int32"): TensorProto.INT32,
    np.dtype("int8"): TensorProto.INT8,
    np.dtype("uint8"): TensorProto.UINT8,
    np.dtype("bool"): TensorProto.BOOL,
}


def pack_4bit(values: np.ndarray) -> bytes:
    """Integers in a 4-bit range (INT4 −8..7 or UINT4 0..15), any shape, packed two per byte in
    row-major order, the first of each pair in the low nibble (ONNX's INT4/UINT4 ``raw_data``); an odd
    count gets a zero high nibble in the last byte. ``ceil(n / 2)`` bytes."""
    flat = (np.asarray(values).astype(np.int16).ravel() & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()

class GraphBuilder:
    """Collects ONNX nodes and initializers; hands out unique tensor and node names.

    Args:
        opset: the default-domain opset the graph targets (converters read it to pick
            opset-dependent forms, e.g. ReduceMean's ``axes`` attribute vs input).
    """

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._consts: dict[tuple, str] = {}

    # names -------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A tensor name not used yet, ``base`` itself when free."""
        return unique_name(base, self._names)

    def reserve(self, name: str) -> None:
        """Mark a name (e.g. the graph input) as taken."""
        self._names.add(name)

    def _node_name(self, base: str) -> str:
        return unique_name(base, self._node_names)

    # nodes -------------------------------------------------------------------
    def node(self, op_type: str, inputs: Sequence[str], name: str, *, n_out: int = 1,
             domain: str = "", **attrs) -> str | list[str]:
        """Append a node named ``name`` (made unique); returns its output name(s).

        Output tensors are named ``<name>`` (one output) or ``<name>:<i>``.
        """
        node_name = self._node_name(name)
        outs = [self.fresh(node_name if n_out == 1 else f"{node_name}:{i}") for i in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name,
                                           domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    # initializers --------------------------------------------------------------
    def initializer(self, base: str, array: np.ndarray | TensorProto) -> str:
        """Add a constant tensor (numpy array, or a ready TensorProto) as an initializer."""
        name = self.fresh(base)
        if isinstance(array, TensorProto):
            t = TensorProto()
            t.CopyFrom(array)
            t.name = name
        else:
            arr = np.asarray(array)
            if arr.dtype not in _NP_TO_ONNX:
                raise TypeError(f"no ONNX type for numpy dtype {arr.dtype}")
            t = numpy_helper.from_array(arr, name)
        self.initializers.append(t)
        return name

    def packed_initializer(self, base: str, elem_type: int, values: np.ndarray) -> str:
        """An initializer of a packed type (INT4/UINT4): ``values`` hold the integers (in the type's range).

        Stored as ``raw_data``, two codes per byte (the first in the low nibble; ONNX's layout), so
        the file holds ``ceil(n / 2)`` bytes for ``n`` codes. (``helper.make_tensor`` without ``raw``
        writes each packed byte as an int32 varint: two bytes for every byte ≥ 128, about 0.75 bytes
        a code for signed weights.)
        """
        values = np.asarray(values)
        return self.initializer(base, helper.make_tensor(base, elem_type, list(values.shape),
                                                         pack_4bit(values), raw=True))

    def shared(self, base: str, values, elem_type: int) -> str:
        """An integer initializer of ONNX type ``elem_type`` (INT8, UINT8, INT32, INT4 or UINT4)
        holding ``values``, shared by value: one per (type, shape, values), named ``base`` by its
        first user. For zero points (all zeros for weights and biases, a few values for activations),
        so the file holds each once whatever the format, as onnxsim's duplicate elimination would
        leave it (which it skips in a graph holding 4-bit tensors)."""
        arr = np.asarray(values)
        key = ("shared", int(elem_type), arr.shape, arr.astype(np.int64).tobytes())
        if key not in self._consts:
            if elem_type in (TensorProto.INT4, TensorProto.UINT4):
                self._consts[key] = self.packed_initializer(base, elem_type, arr)
            else:
                np_type = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT32: np.int32}
                self._consts[key] = self.initializer(base, arr.astype(np_type[elem_type]))
        return self._consts[key]

    def const(self, value, dtype: str = "int64") -> str:
        """A shared constant initializer (cached by value): ints as int64 1-D, floats as float32."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            tag = "x".join(str(int(v)) if arr.dtype.kind in "iu" else f"{float(v):g}"
                           for v in arr.ravel()[:8]) or "empty"
            self._consts[key] = self.initializer(f"const_{arr.dtype.name}_{tag}".replace("-", "m"), arr)
        return self._consts[key]

    # finishing ---------------------------------------------------------------
    def rename_tensor(self, old: str, new: str) -> None:
        """Rename a node output (and its uses) — used to call the graph output ``logits``."""
        self.reserve(new)
        for n in self.nodes:
            for seq in (n.input, n.output):
                for i, t in enumerate(seq):
                    if t == old:
                        seq[i] = new

    def produced(self, tensor: str) -> bool:
        return any(tensor in n.output for n in self.nodes)
