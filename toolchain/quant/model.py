"""The quantized model: a rewritten torch.fx GraphModule plus the scheme that built it."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .layers import QuantLayer
from .quantizers import ActPerTensorFloat, IntWeightPerChannelFloat, Quantizer
from .scheme import QuantScheme


class QuantizedModel(nn.Module):
    """A deployable fake-quantized model (the "deploy" scheme of ARCHITECTURE.md).

    Built by :func:`toolchain.quant.rewrite.quantize_graph`; ``forward`` takes the same
    input as the FP model — (N, C, H, W) float32 in the normalized input space — and
    returns logits (N, num_classes) float32, computed on the integer grids that the
    exported QDQ ONNX model uses.

    Attributes:
        gm: the rewritten ``torch.fx.GraphModule`` (call_module nodes for
            QuantConv2d/QuantLinear layers and activation quantizers; ATen ops elsewhere).
        scheme: the scheme it was built with (each tensor role's spec; :class:`.scheme.QuantScheme`).
    """

    def __init__(self, gm: torch.fx.GraphModule, scheme: QuantScheme):
        super().__init__()
        self.gm = gm
        self.scheme = scheme
        #: op name → count of ops run in float by design / with no role in the vocabulary
        self.float_ops: dict[str, int] = {}
        self.unknown_ops: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gm(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    # ---- views ---------------------------------------------------------------
    def layers(self) -> dict[str, QuantLayer]:
        """Quantized Conv/Linear layers by graph module path, in graph order."""
        return {n.target: self.gm.get_submodule(n.target) for n in self.gm.graph.nodes
                if n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), QuantLayer)}

    def act_quantizers(self) -> dict[str, ActPerTensorFloat]:
        """Activation quantizers by graph module path, in graph order."""
        return {n.target: self.gm.get_submodule(n.target) for n in self.gm.graph.nodes
                if n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), ActPerTensorFloat)}

    def weight_quantizers(self) -> dict[str, IntWeightPerChannelFloat]:
        return {name + ".weight_quant": layer.weight_quant for name, layer in self.layers().items()}

    def quantizers(self) -> Iterator[Quantizer]:
        yield from self.act_quantizers().values()
        yield from (layer.weight_quant for layer in self.layers().values())

    # ---- modes ---------------------------------------------------------------
    def set_mode(self, mode: str, *, weights: bool = True, acts: bool = True) -> None:
        """Switch weight and/or activation quantizers to ``"quant"`` or ``"float"``."""
        if acts:
            for q in self.act_quantizers().values():
                q.set_mode(mode)
        if weights:
            for layer in self.layers().values():
                layer.weight_quant.set_mode(mode)

    @contextlib.contextmanager
    def float_mode(self, *, weights: bool = True, acts: bool = True):
        """Temporarily run (part of) the model unquantized: the folded FP model."""
        saved = [(q, q.mode) for q in self.quantizers()]
        self.set_mode("float", weights=weights, acts=acts)
        try:
            yield self
        finally:
            for q, m in saved:
                q.set_mode(m)

    def learn_scales(self, weights: bool = True, acts: bool = True) -> None:
        """Make quantizer scales trainable (LSQ-style) or keep them fixed."""
        for q in self.act_quantizers().values():
            q.learn_scale(acts)
        for layer in self.layers().values():
            layer.weight_quant.learn_scale(weights)

    def summary(self) -> list[dict]:
        """One row per quantizer: name, kind, bits, scale (min/max over channels), zero_point."""
        rows = []
        for name, q in self.act_quantizers().items():
            rows.append({"name": name, "kind": type(q).__name__, "bits": q.bits,
                         "scale": float(q.effective_scale()), "zero_point": int(q.zero_point),
                         "range": [round(v, 6) for v in q.range()]})
        for name, layer in self.layers().items():
            s = layer.weight_quant.effective_scale()
            rows.append({"name": name + ".weight_quant", "kind": type(layer.weight_quant).__name__,
                         "bits": layer.weight_quant.bits, "role": layer.role,
                         "scale_min": float(s.min()), "scale_max": float(s.max())})
        return rows

