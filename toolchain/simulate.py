"""Accuracy of a quantized model in torch simulation, for schemes no integer runtime computes.

The ``paper`` scheme (:mod:`toolchain.quant.protocol`) is simulation only: its numbers come from the
fake-quant torch model (float32), beside the FP model on the same preprocessed images, with the
same counting as ``verify`` (:func:`toolchain.verify.evaluate.evaluate`). Deployable models are
measured on onnxruntime instead (``verify``); this module is not a substitute for that.
"""

from __future__ import annotations

import numpy as np
import torch

from .reports import SimulationResult
from .verify.evaluate import evaluate

#: what computed the quantized logits (``SimulationResult.simulation``)
SIMULATION = "fake-quant, float32 torch"


class TorchClassifier:
    """A torch model behind :func:`~toolchain.verify.evaluate.evaluate`'s interface:
    ``logits(x)`` with x float32 (N, C, H, W) numpy → float32 (N, K) numpy, on the CPU, no grad."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.cpu().eval()

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()


def simulate_accuracy(qmodel: torch.nn.Module, fp_model: torch.nn.Module, evalset, meta, *, reason: str,
                      batch_size: int = 64, limit: int | None = None, progress=None) -> SimulationResult:
    """Top-1/top-5 of the simulated quantized model and of the FP model, and their agreement.

    Args:
        qmodel: the quantized model (its fake-quant forward); fp_model: the FP reference.
        evalset: labelled classification images (:func:`toolchain.data.open_eval_set`); meta: the model card.
        reason: why the model is simulated and not exported (the protocol's ``why_simulated``).
        batch_size, limit, progress: as for :func:`~toolchain.verify.evaluate.evaluate`.

    Returns:
        :class:`~toolchain.reports.SimulationResult` (percentages 0..100).

    Raises:
        DataError: an empty eval set or images that do not fit the model.
    """
    r = evaluate(evalset, meta, {"quantized": TorchClassifier(qmodel), "fp32": TorchClassifier(fp_model)},
                 batch_size=batch_size, limit=limit, progress=progress)
    q, fp = r.tallies["quantized"].accuracy(), r.tallies["fp32"].accuracy()
    return SimulationResult(n_images=r.n_images, top1=q.top1, top5=q.top5, fp_top1=fp.top1, fp_top5=fp.top5,
                            agreement_top1=100.0 * r.agree / r.n_images, simulation=SIMULATION, reason=reason)
