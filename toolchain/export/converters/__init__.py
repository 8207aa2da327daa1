"""fx node → ONNX converters: one registry keyed by ATen target (or quantized module class).

Each converter gets the :class:`ExportContext` and one fx node and returns its
:class:`~..onnx_graph.Value`. The same converters write all three formats; what
they emit follows the quantizers' modes and the context's ``fmt``:

- ``qdq``: activation quantizer → ``QuantizeLinear(uint8)`` → ``Clip(0, qmax)`` for
  bits < 8 ("QCDQ") → codes; a ``DequantizeLinear`` with the same scale/zero point
  is made where a float consumer needs the tensor. Weights: ``DequantizeLinear``
  of int8 per-channel codes (``axis=0``); bias: ``DequantizeLinear`` of int32 codes
  with scale ``s_in * s_w``. Grid-preserving ops (reshape, flatten, slice, zero pad,
  max pooling, ReLU on a quantized tensor) run on the uint8 codes, before the
  DequantizeLinear, so every Conv/Gemm/Add/Concat/pool sees ``DQ → op → Q`` — the
  pattern onnxruntime's QDQ transformers fuse (QLinearConv, QGemm, QLinearAdd, …).
- ``int4``: as ``qdq`` but INT4 weight codes (bits ≤ 4) and UINT4 activation codes
  (bits ≤ 4; a float Clip to the quantizer's range goes before a 3-bit Q); shape ops
  run on the float tensor since onnxruntime has few UINT4 kernels.
- ``fp32`` (the model in ``float_mode()``): quantizers are identities, weights are
  the folded float32 tensors.

A ReLU/ReLU6/clamp whose only consumers are activation quantizers that saturate at
or inside its bounds is dropped (exact: it cannot change a code). Onnxruntime would
drop a Relu before a zero-point-0 Q itself, but not a Clip(0, 6) before a sub-8-bit
quantizer (it sees the uint8 range), which would leave the Conv in float.

Layout (as onnxruntime's ``quantization/operators/``): :mod:`.base` (formats, the
registry, argument helpers), :mod:`.context` (:class:`ExportContext`: the walk's state
and the tensor steps converters share), and one module per op family, each registering
its converters with ``@converter(target, …)``. This package imports every family module
below, so the registry is complete once ``toolchain.export.converters`` is imported; a
target registered twice is an error, so no family can silently override another. A new
op's converter goes into the module of its family (see ``docs/architecture.md``).
"""

from __future__ import annotations

from . import (activations, conv_gemm, elementwise, float_ops, normalization, pooling, quantizers, resize, shape,
               symbolic)
from .base import CONVERTERS, FMT_FP32, FMT_INT4, FMT_QDQ, FORMATS, Converter, converter, node_arg, norm_dim, pair
from .context import ExportContext, reaches
from .conv_gemm import layer_params
from .float_ops import GENERIC_FLOAT
from .shape import split_sizes

#: the op-family modules, each registering its converters on import
FAMILIES = (quantizers, conv_gemm, activations, float_ops, elementwise, pooling, shape, normalization, symbolic,
            resize)

__all__ = ["CONVERTERS", "Converter", "ExportContext", "FAMILIES", "FMT_FP32", "FMT_INT4", "FMT_QDQ", "FORMATS",
           "GENERIC_FLOAT", "converter", "layer_params", "node_arg", "norm_dim", "pair", "reaches", "split_sizes"]
