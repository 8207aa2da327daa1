"""Empirical bias correction on synthetic images: remove the per-channel mean shift quantization adds.

Quantized weights (and activations) shift the mean of each layer's output: ``E[W̃x̃] ≠ E[Wx]``. The
shift is biggest where a channel has few weights, as in depthwise convs (3×3 = 9 weights a
channel), and it accumulates through the network. Bias correction subtracts it from the layer's bias
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019,
sec. 4.2, the empirical variant; Finkelstein et al., "Fighting Quantization Bias With Bias", 2019,
sec. 3, iterated layer by layer as here):

    b[c] ← b[c] − (E[ỹ[c]] − E[y[c]])

exact up to the int32 bias grid (step ``s_in · s_w[c]``, the exported bias's scale), which at 3–4
bits can be a visible share of the shift itself

where y is the FP (BN-folded) layer's output on the FP model's input and ỹ the quantized layer's on
the quantized model's input, the expectation over images and positions. Data-free here: the images
are the method's synthetic set (zqtool never reads data to quantize).

The first pass over the set corrects the layers in graph order as it goes: a forward hook on each
layer subtracts the running mean of its per-batch shifts (after the last batch, the mean over all
batches). A layer's early batches were measured before the layers feeding it had their final
correction, so each later pass measures every layer's shift with all biases fixed and removes it
at the end of the pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .layers import QuantLayer
from .model import QuantizedModel


@dataclass
class BiasCorrectionLog:
    """What the correction did: per layer the mean |shift| removed (in the layer's output units),
    the images it ran on, and the seconds it took (``log.json`` → ``bias_correction``)."""

    images: int
    shifts: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"images": self.images, "seconds": round(self.seconds, 3),
                "mean_abs_shift": {k: round(v, 6) for k, v in self.shifts.items()}}


def _channel_mean(out: torch.Tensor) -> torch.Tensor:
    """(C,) mean of a layer output (N, C, ...) over every dim but the channel's."""
    return out.detach().float().mean(dim=[0, *range(2, out.ndim)])


def _fp_means(reference: QuantizedModel, images: torch.Tensor, batch: int) -> list[dict[str, torch.Tensor]]:
    """Per batch, each layer's (C,) output mean in the FP model."""
    layers = reference.layers()
    out: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, inputs, y):
            current[name] = _channel_mean(y)
        return fn

    handles = [layer.register_forward_hook(hook(n)) for n, layer in layers.items()]
    try:
        with torch.no_grad(), reference.float_mode():
            for i in range(0, len(images), batch):
                current = {}
                reference(images[i:i + batch])
                out.append(current)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def correct_biases(qmodel: QuantizedModel, images: torch.Tensor, *, reference: QuantizedModel,
                   batch: int = 32, passes: int = 2, progress=None) -> BiasCorrectionLog:
    """Subtract each quantized layer's mean output shift from its bias, in place (module docstring).

    Args:
        qmodel: the quantized model (weights and activation ranges final; BN folded: a layer still
            training its BN in the loop has no bias of its own to correct and raises).
        images: (N, C, H, W) float32 synthetic images in the normalized input space, on the device of
            both models.
        reference: the FP model in the same structure (``quantize_graph`` of the FP program; run in
            float mode, never modified): its layer outputs are the targets.
        batch: images per forward pass.
        passes: passes over the set (>= 1); each after the first removes what is left of the shift
            (a layer's input changed while the layers before it were corrected).
        progress: ``progress(description, total) -> task`` (as :attr:`MethodContext.progress`).

    Returns:
        :class:`BiasCorrectionLog`.

    Raises:
        ValueError: the models' layers differ, or a layer's BN is not folded.
    """
    t0 = time.perf_counter()
    layers: dict[str, QuantLayer] = qmodel.layers()
    if list(layers) != list(reference.layers()):
        raise ValueError("the reference model's layers differ from the quantized model's")
    if any(layer.bn_qat is not None for layer in layers.values()):
        raise ValueError("bias correction needs folded BN: fold the BN trained in the loop first")
    was_training = qmodel.training
    qmodel.eval()
    reference.eval()
    targets = _fp_means(reference, images, batch)
    removed = {n: torch.zeros_like(layer.bias) for n, layer in layers.items()}
    state: dict = {}

    def hook(name):
        def fn(module, inputs, y):
            # this batch's shift with the bias the pass started from
            shift = _channel_mean(y) + state["applied"][name] - targets[state["k"]][name]
            state["sum"][name] += shift
            if not state["running"]:
                return y
            # first pass: the bias becomes the start minus the running mean of the shifts at once
            before = module.quant_bias()
            module.bias.copy_(state["start"][name] - state["sum"][name] / (state["k"] + 1))
            # what the output moves by: the change of the bias on its int32 grid (scale s_in·s_w)
            delta = before - module.quant_bias()
            state["applied"][name] += delta
            return y - delta.view(1, -1, *([1] * (y.ndim - 2))).to(y.dtype)
        return fn

    handles = [layer.register_forward_hook(hook(n)) for n, layer in layers.items()]
    n_batches = len(targets)
    task = progress(f"bias correction ({len(layers)} layers, {passes} passes)", passes * n_batches) \
        if progress else None
    try:
        for p in range(passes):
            state["running"] = p == 0
            state["sum"] = {n: torch.zeros_like(layer.bias) for n, layer in layers.items()}
            state["applied"] = {n: torch.zeros_like(layer.bias) for n, layer in layers.items()}
            state["start"] = {n: layer.quant_bias().detach().clone() for n, layer in layers.items()}
            for k in range(n_batches):
                state["k"] = k
                qmodel(images[k * batch:(k + 1) * batch])
                if task is not None:
                    task.advance(1)
            for n, layer in layers.items():
                if not state["running"]:  # later passes: measured with every bias fixed, then removed
                    layer.bias.copy_(state["start"][n] - state["sum"][n] / n_batches)
                removed[n] += state["start"][n] - layer.quant_bias()
    finally:
        for h in handles:
            h.remove()
        if task is not None:
            task.close()
        qmodel.train(was_training)
    return BiasCorrectionLog(images=len(images),
                             shifts={n: float(a.abs().mean()) for n, a in removed.items()},
                             seconds=time.perf_counter() - t0)
