"""Activation range calibration on (synthetic) inputs: min-max, MSE-optimal, percentile.

The quantized model runs with weights quantized and activations in float while
observers record each activation quantizer's input; then each quantizer gets the
range chosen by ``method``:

- ``minmax``: [min, max] of everything seen;
- ``mse``: the clipping of [min, max] (a ratio in 0.3..1 on a grid) that minimizes the
  mean squared fake-quantization error on a sample of the values (Banner et al. 2019;
  Nagel et al. 2021, "A White Paper on Neural Network Quantization", sec. 3.4);
- ``percentile``: the ``percentile`` and ``100 - percentile`` quantiles of the sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..core.errors import ConfigError
from .fake_quant import fake_quantize
from .model import QuantizedModel
from .quantizers import ActPerTensorFloat

CALIBRATIONS = ("minmax", "mse", "percentile")


@dataclass
class RangeObserver:
    """Running min/max plus a bounded random sample of the observed values (float32, CPU)."""

    max_samples: int = 1 << 18
    lo: float = float("inf")
    hi: float = float("-inf")
    samples: list = field(default_factory=list)
    _count: int = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        keep = min(x.numel(), max(self.max_samples // 8, 1))
        idx = torch.randint(0, x.numel(), (keep,), device=x.device)
        self.samples.append(x[idx].cpu())
        self._count += keep
        if self._count > 2 * self.max_samples:  # thin the reservoir
            s = torch.cat(self.samples)
            self.samples = [s[torch.randperm(s.numel())[: self.max_samples]]]
            self._count = self.max_samples

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples) if self.samples else torch.zeros(1)


def mse_range(q: ActPerTensorFloat, values: torch.Tensor, lo: float, hi: float,
              grid: int = 60) -> tuple[float, float]:
    """The clipped range [r·lo, r·hi], r in [0.3, 1], minimizing E[(x − fq(x))²] on ``values``."""
    best, best_err = (lo, hi), float("inf")
    saved = (q.scale.detach().clone(), q.zero_point.clone())
    for r in torch.linspace(0.3, 1.0, grid).tolist():
        q.set_range(lo * r, hi * r)
        err = float(((fake_quantize(values, q.effective_scale(), q.zero_point, q.qmin, q.qmax)
                      - values) ** 2).mean())
        if err < best_err:
            best, best_err = (lo * r, hi * r), err
    with torch.no_grad():
        q.scale.copy_(saved[0])
        q.zero_point.copy_(saved[1])
    return best


@torch.no_grad()
def calibrate(qmodel: QuantizedModel, batches: Iterable[torch.Tensor], method: str = "minmax",
              percentile: float = 99.99, skip: Iterable[str] = (), progress=None) -> dict[str, tuple]:
    """Set every activation quantizer's range from the model's float activations on ``batches``.

    Args:
        qmodel: the quantized model (weights stay quantized during observation).
        batches: iterable of (N, C, H, W) float32 inputs in the normalized input space.
        method: "minmax", "mse" or "percentile".
        percentile: for ``percentile`` (e.g. 99.99).
        skip: quantizer names whose range is already set (e.g. the network input) — untouched.
        progress: optional callable(advance: int) called once per batch.

    Returns:
        name → (lo, hi) range set.

    Raises:
        ConfigError: unknown method, or no batch given.
    """
    if method not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration {method!r}", f"choose one of {', '.join(CALIBRATIONS)}")
    skip = set(skip)
    quantizers = {n: q for n, q in qmodel.act_quantizers().items() if n not in skip}
    observers = {n: RangeObserver() for n in quantizers}
    hooks = [q.register_forward_pre_hook(lambda m, args, o=observers[n]: o(args[0]))
             for n, q in quantizers.items()]
    was_training = qmodel.training
    qmodel.eval()
    seen = 0
    try:
        with qmodel.float_mode(weights=False, acts=True):
            for x in batches:
                qmodel(x)
                seen += 1
                if progress:
                    progress(1)
    finally:
        for h in hooks:
            h.remove()
        qmodel.train(was_training)
    if not seen:
        raise ConfigError("calibration got no batch")
    ranges = {}
    for n, q in quantizers.items():
        o = observers[n]
        lo, hi = o.lo, o.hi
        if method == "mse":
            lo, hi = mse_range(q, o.sample().to(q.scale.device), min(lo, 0.0), max(hi, 0.0))
        elif method == "percentile":
            s = o.sample()
            k_hi = torch.quantile(s, percentile / 100).item()
            k_lo = torch.quantile(s, 1 - percentile / 100).item()
            lo, hi = k_lo, k_hi
        q.set_range(lo, hi)
        ranges[n] = q.range()
    return ranges


def set_input_range(qmodel: QuantizedModel, mean, std) -> tuple[float, float] | None:
    """Give the network-input quantizer the exact range of normalized pixels in [0, 1].

    For ``x = (p − mean_c)/std_c`` with p in [0, 1] the range is
    [min_c(−mean_c/std_c), max_c((1 − mean_c)/std_c)] — known from the model card, no data.
    Returns the range, or None when the model has no input quantizer named ``act_quant.input``.
    """
    q = qmodel.act_quantizers().get("act_quant.input")
    if q is None:
        return None
    lo = min(-m / s for m, s in zip(mean, std))
    hi = max((1 - m) / s for m, s in zip(mean, std))
    q.set_range(lo, hi)
    return q.range()
