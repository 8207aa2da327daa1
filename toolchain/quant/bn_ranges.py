"""Activation ranges from BN statistics alone — no inputs at all (the naive data-free baseline).

Each channel of a BN output is modelled as a Gaussian N(β_c, γ_c²) (the BN affine
parameters are the output's mean and standard deviation when the running statistics
hold). These per-channel moments are propagated through the rest of the graph, op by op,
under an independence assumption (the inputs of an op, and the terms of a sum, are
treated as independent). This is the "minmax" method's activation calibration (ZeroQ,
Cai et al. CVPR 2020, sec. 3, describes the failure mode it suffers from: ranges from BN
parameters alone ignore the input distribution beyond the first two moments).

Representation. The moments of a tensor of shape (N, *S) are two float32 tensors (mean,
variance) shaped like one sample, S, with size 1 on every dim where they do not vary
(broadcast): (C, 1, 1) for a feature map (N, C, H, W), (F,) for features (N, F), (2, C/2, 1, 1)
inside a channel shuffle. They are reshaped, transposed, sliced and split like the tensor
itself, so the channel order is tracked through a shuffle. Spatial positions share their
channel's moments; border effects of zero padding are ignored (the interior statistics).

Rules, by op (X ~ N(μ, σ²) per element; "keep" = moments unchanged):

- network input: pixels uniform on [0, 1] normalized by the model card's mean/std:
  μ = (0.5 − m)/s, σ² = (1/12)/s².
- Conv/Linear followed by a folded BN: N(β, γ²) of that BN (see above).
- Conv without BN: μ' = W·μ + b, σ'² = W²·σ² summed over the receptive field (a weighted sum of
  independent terms), at an interior position (borders ignored); for spatially varying input
  moments the convolution itself, with its stride/padding/dilation, is applied to the mean and
  variance maps (zero padding is exact there: a padded input is 0 with variance 0).
  Linear: μ' = W μ + b, σ'² = W² σ².
- standalone BatchNorm (not folded: e.g. DenseNet's pre-activation concat → BN → ReLU), the
  inference-mode affine map y = (x − m_c)·γ_c/√(v_c + ε) + β_c (Ioffe & Szegedy 2015, Alg. 2):
  μ' = (μ − m)·s + β, σ'² = σ²·s² with s = γ/√(v + ε), from the BN's running statistics.
- ReLU: moments of the rectified Gaussian (closed form: E[max(X,0)] = μΦ(a) + σφ(a),
  E[max(X,0)²] = (μ² + σ²)Φ(a) + μσφ(a), a = μ/σ; e.g. Beauchamp 2018, "On numerical
  computation for the distribution of the convolution of N independent rectified Gaussian
  variables", J. SFdS 159). ReLU6/clamp with a lower bound ≥ 0: the same, mean capped at the
  upper bound, and the quantizer's upper end clipped there (``hi_cap``); a clamp with a negative
  lower bound: mean capped at the upper bound only (that lower bound does not clip the range:
  the rule as it was, kept so that exports stay byte-identical).
- smooth elementwise activations (hardswish, hardsigmoid, SiLU, sigmoid, GELU, tanh), one
  generic rule: E[f(X)] = (2π)^−½ Σᵢ wᵢ f(μ + σ xᵢ) and
  Var[f(X)] = (2π)^−½ Σᵢ wᵢ (f(μ + σ xᵢ) − E)²
  by Gauss–Hermite quadrature (Abramowitz & Stegun 25.4.46) in its probabilists' form, weight
  e^{−x²/2} (``numpy.polynomial.hermite_e.hermegauss``), ``GH_POINTS`` nodes, in float64,
  f evaluated with the graph's own ATen op. 128 nodes, not 32–64: hardswish/hardsigmoid have
  kinks at ±3, where Gauss–Hermite converges slowly (against a dense integral, hardsigmoid's
  variance for N(5, 10²) is 7% off at 32 nodes, hardswish's for N(−4, 2²) 1.3% off at 64; at 128
  every case checked is within 1%; the cost is C·128 evaluations a layer). The range of f over
  the reals, found numerically with the same op on a fine grid (refined around an interior extremum; an
  end is bounded when f is flat out to twice the grid), clips the quantizer's range
  (``lo_cap``/``hi_cap``): hardsigmoid and sigmoid [0, 1], tanh [−1, 1], hardswish ≥ −0.375,
  SiLU ≥ −0.2785, GELU ≥ −0.17.
- Add / Sub (and rsub) of two tensors: means add (subtract), variances add (an ``alpha`` scales the
  second term's mean by α, its variance by α²); with a number or constant tensor: the mean shifts.
- Mul of two tensors (squeeze-excitation: x (N,C,H,W) · s (N,C,1,1), broadcast), independent
  factors: μ = μa μb, σ² = σa²σb² + σa²μb² + σb²μa² (Goodman 1960, "On the exact variance of
  products", JASA 55:708); its bounds from the factors' bounds by interval arithmetic
  (hardswish · hardsigmoid ≥ −0.375). Mul / Div by a number c: μ·c, σ²·c² (μ/c, σ²/c²), bounds
  scaled.
- Concat: moments concatenated along the same dim; slice / chunk / split: sliced the same way
  (each part taken by ``getitem``); zero padding of the channel dim: channels of mean 0,
  variance 0.
- channel rearrangements (Zhang et al. 2018, ShuffleNet, sec. 3.1: view (N, g, C/g, H, W) →
  transpose(1, 2) → view (N, C, H, W)): permute/transpose and reshape/view/flatten/(un)squeeze
  move the moments exactly as the values move (the moments are expanded to the sample's shape,
  reshaped, and dims on which they are constant are collapsed back to size 1). Flattening
  (N, C, H, W) into (N, C·H·W) thus repeats each channel's moments H·W times, C-major. A
  reshape that mixes the batch into the sample raises.
- pooling (avg, adaptive avg, mean over dims, max) and upsampling (nearest, bilinear): keep the
  per-channel moments (the average of correlated values has at most their variance). Where the
  moments vary over the pooled/upsampled dims, the op itself is applied to the mean and the
  variance maps: exact for the mean of an average or an interpolation, an upper bound for its
  variance (Var Σwᵢxᵢ ≤ (Σwᵢσᵢ)² ≤ Σwᵢσᵢ² for convex weights); for max-pooling, an envelope.
- identity ops (contiguous, clone, eval dropout …): keep.
- anything else raises :class:`UnsupportedModelError` naming the node and the op.

A quantizer's range is [min(μ − k·σ), max(μ + k·σ)] over its tensor's channels (and positions),
with k = ``num_std``, clipped to the activation's bounds (``lo_cap``/``hi_cap``: ≤ 6 after ReLU6,
[0, 1] after a sigmoid …); the quantizer then widens it to include 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from ..core.errors import UnsupportedModelError
from ..graph import ops
from .layers import QuantConv2d, QuantLinear
from .model import QuantizedModel
from .quantizers import ActPerTensorFloat

aten = ops.aten

#: Gauss–Hermite nodes of the smooth-activation rule (see the module docstring)
GH_POINTS = 128

_SUB, _RSUB, _DIV = ops.SUB, ops.RSUB, ops.DIV
_MUL = ops.MUL | ops.MUL_SCALAR
_HINT = "use --method bnstat (calibration on synthetic data)"


@dataclass
class Moments:
    """Elementwise mean and variance of one tensor (see "Representation" in the module docstring).

    Attributes:
        mean, var: float32 tensors shaped like one sample of the tensor, size 1 on broadcast dims
            ((C, 1, 1) for a feature map (N, C, H, W); (F,) for features (N, F)).
        hi_cap, lo_cap: bounds of the tensor's values seen on the way (ReLU6's 6, a sigmoid's
            [0, 1] …) that clip the quantizer's range; None when unbounded.
        shape: the sample's actual shape (the tensor's shape without the batch dim), when the
            graph records it; mean/var have the same number of dims, each equal to it or 1.
    """

    mean: torch.Tensor
    var: torch.Tensor
    hi_cap: float | None = None
    lo_cap: float | None = None
    shape: tuple[int, ...] | None = None

    def sizes(self) -> tuple[int, ...]:
        """The sample's shape: :attr:`shape`, else the broadcast shape of mean and var."""
        if self.shape is not None:
            return self.shape
        return tuple(torch.broadcast_shapes(self.mean.shape, self.var.shape))

    def is_broadcast(self, d: int) -> bool:
        """True when mean and var are constant along sample dim ``d`` (size 1 there)."""
        return self.mean.shape[d] == 1 and self.var.shape[d] == 1


_SQRT2 = math.sqrt(2.0)


def _relu_moments(m: Moments) -> Moments:
    mu, sd = m.mean, m.var.clamp_min(1e-12).sqrt()
    a = mu / sd
    cdf = 0.5 * (1 + torch.erf(a / _SQRT2))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    mean = mu * cdf + sd * pdf
    ex2 = (mu * mu + sd * sd) * cdf + mu * sd * pdf
    return Moments(mean, (ex2 - mean * mean).clamp_min(0.0))


# ----------------------------------------------------------------------------- smooth activations


@functools.lru_cache(maxsize=None)
def _gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(nodes, weights) float64 for E[g(Z)], Z ~ N(0, 1): E ≈ Σ wᵢ g(xᵢ) (weights sum to 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.from_numpy(x), torch.from_numpy(w / math.sqrt(2.0 * math.pi))


def gaussian_expectation(f, mean: torch.Tensor, var: torch.Tensor, points: int = GH_POINTS):
    """(E[f(X)], Var[f(X)]) for X ~ N(mean, var) elementwise, by Gauss–Hermite quadrature.

    Args:
        f: an elementwise function of a float64 tensor (e.g. ``torch.nn.functional.hardswish``).
        mean, var: tensors of one shape (var ≥ 0; negative values are taken as 0).
        points: the number of quadrature nodes.

    Returns:
        Two float32 tensors shaped like ``mean``; the variance is ≥ 0.
    """
    x, w = _gauss_hermite(points)
    mu = mean.double().unsqueeze(-1)
    sd = var.double().clamp_min(0).sqrt().unsqueeze(-1)
    y = f(mu + sd * x)
    e = (y * w).sum(-1)
    v = ((y - e.unsqueeze(-1)) ** 2 * w).sum(-1)
    return e.float(), v.float().clamp_min(0.0)


def _extreme(f, y: torch.Tensor, x: torch.Tensor, far: float, largest: bool) -> float | None:
    """inf (sup when ``largest``) of f over the reals from its values y on the grid x, or None
    when f is unbounded that way (the extremum is at a grid end and f still moves out to ``far``)."""
    i = int(torch.argmax(y) if largest else torch.argmin(y))
    pick = torch.max if largest else torch.min
    if 0 < i < len(x) - 1:  # interior: refine between the neighbours
        fine = torch.linspace(float(x[i - 1]), float(x[i + 1]), 4097, dtype=torch.float64)
        return float(pick(torch.cat([f(fine), y[i:i + 1]])))
    end = float(x[i])
    y_end, y_far = float(y[i]), float(f(torch.tensor([math.copysign(far, end)], dtype=torch.float64)))
    if abs(y_far - y_end) > 1e-9 * (1.0 + abs(y_end)):
        return None
    return round(min(y_end, y_far) if not largest else max(y_end, y_far), 12)  # the asymptote: 2.6e-56 → 0


@functools.lru_cache(maxsize=None)
def _value_bounds(target, extra: tuple, kw: tuple) -> tuple[float | None, float | None]:
    """(inf, sup) of the elementwise op ``target(x, *extra, **kw)`` over the reals (None: unbounded)."""
    f = functools.partial(_apply_elementwise, target, extra, dict(kw))
    half = 64.0
    x = torch.linspace(-half, half, 128 * 1024 + 1, dtype=torch.float64)
    y = f(x)
    return _extreme(f, y, x, 2 * half, largest=False), _extreme(f, y, x, 2 * half, largest=True)


def _apply_elementwise(target, extra, kw, x):
    return target(x, *extra, **kw)


def _smooth_moments(target, m: Moments, extra: tuple, kwargs: dict) -> Moments:
    f = functools.partial(_apply_elementwise, target, extra, kwargs)
    mean, var = gaussian_expectation(f, m.mean, m.var)
    key = tuple(sorted(kwargs.items()))
    try:
        lo, hi = _value_bounds(target, extra, key)
    except TypeError:  # an unhashable argument: no cache
        lo, hi = _value_bounds.__wrapped__(target, extra, key)
    return Moments(mean, var, hi_cap=hi, lo_cap=lo)


# ----------------------------------------------------------------------------- shapes


def _sample_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The node's tensor shape without the batch dim (static ints), or None when unknown."""
    val = node.meta.get("val")
    shape = getattr(val, "shape", None)
    if not isinstance(val, torch.Tensor) or shape is None or len(shape) < 1:
        return None
    dims = tuple(shape[1:])
    return dims if all(isinstance(d, int) for d in dims) else None


def _expand(m: Moments, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and var materialized at ``shape`` (contiguous)."""
    return m.mean.expand(shape).contiguous(), m.var.expand(shape).contiguous()


def _collapse(t: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t, u with every dim on which both are constant reduced to size 1 (exact: the values are equal)."""
    for d in range(t.ndim):
        if t.shape[d] > 1:
            t0, u0 = t.narrow(d, 0, 1), u.narrow(d, 0, 1)
            if bool((t == t0).all()) and bool((u == u0).all()):
                t, u = t0, u0
    return t.contiguous(), u.contiguous()


def _reshape(m: Moments, out: tuple[int, ...], node: fx.Node) -> Moments:
    """The moments of ``x.reshape(N, *out)``: expanded to the sample, reshaped, re-collapsed."""
    src = m.sizes()
    if math.prod(src) != math.prod(out):
        raise UnsupportedModelError(
            f"minmax cannot propagate BN statistics through {node.name} ({node.target}): "
            f"the reshape of a sample {tuple(src)} into {tuple(out)} mixes it with the batch", _HINT)
    mean, var = _expand(m, src)
    mean, var = _collapse(mean.reshape(out), var.reshape(out))
    return Moments(mean, var, m.hi_cap, m.lo_cap)


def _sample_dim(d: int, m: Moments, node: fx.Node) -> int:
    """The sample dim of the tensor dim ``d`` (negative allowed); the batch dim raises."""
    full = m.mean.ndim + 1
    d = int(d) % full
    if d == 0:
        raise UnsupportedModelError(
            f"minmax cannot propagate BN statistics through {node.name} ({node.target}): "
            "it acts on the batch dimension", _HINT)
    return d - 1


def _materialize_dim(m: Moments, d: int) -> Moments:
    """m with sample dim d expanded to its actual size (when it is broadcast)."""
    size = m.sizes()[d]
    if m.mean.shape[d] == size and m.var.shape[d] == size:
        return m
    shape = list(torch.broadcast_shapes(m.mean.shape, m.var.shape))
    shape[d] = size
    mean, var = _expand(m, shape)
    return dataclasses.replace(m, mean=mean, var=var)


def _spatially_constant(m: Moments) -> bool:
    return all(m.is_broadcast(d) for d in range(1, m.mean.ndim))


def _channels(mean: torch.Tensor, var: torch.Tensor, ndim: int) -> Moments:
    """Per-channel (C,) moments as a sample of ``ndim`` dims: (C, 1, …, 1)."""
    view = (-1,) + (1,) * (ndim - 1) if ndim >= 1 else ()
    return Moments(mean.reshape(view), var.reshape(view))


def _constant(t, m: Moments, node: fx.Node) -> torch.Tensor:
    """A number or constant tensor operand as a sample-shaped float32 tensor."""
    if not isinstance(t, torch.Tensor):
        return torch.tensor(float(t))
    t = t.detach().float()
    if t.ndim == m.mean.ndim + 1:
        if t.shape[0] != 1:
            raise UnsupportedModelError(
                f"minmax cannot propagate BN statistics through {node.name} ({node.target}): "
                "a constant operand varies over the batch", _HINT)
        t = t[0]
    elif t.ndim > m.mean.ndim + 1:
        raise UnsupportedModelError(
            f"minmax cannot propagate BN statistics through {node.name} ({node.target}): "
            f"a constant operand of shape {tuple(t.shape)} broadcasts the tensor", _HINT)
    return t


def _interval(m: Moments) -> tuple[float, float]:
    return (-math.inf if m.lo_cap is None else m.lo_cap), (math.inf if m.hi_cap is None else m.hi_cap)


def _caps(lo: float, hi: float) -> tuple[float | None, float | None]:
    """(hi_cap, lo_cap) of the interval [lo, hi], None where infinite."""
    return (None if math.isinf(hi) else hi), (None if math.isinf(lo) else lo)


def _product_caps(a: Moments, b: Moments) -> tuple[float | None, float | None]:
    """Bounds of a product from its factors' bounds (interval arithmetic; 0·∞ = 0, a bound 0 is exact)."""
    mul = lambda x, y: 0.0 if x == 0.0 or y == 0.0 else x * y  # noqa: E731
    corners = [mul(x, y) for x in _interval(a) for y in _interval(b)]
    return _caps(min(corners), max(corners))


def _scaled_caps(m: Moments, c) -> tuple[float | None, float | None]:
    """Bounds of m·c for a number c (a constant tensor: no bounds)."""
    if isinstance(c, torch.Tensor) and c.numel() != 1:
        return None, None
    c = float(c)
    lo, hi = _interval(m)
    corners = [0.0 if c == 0.0 else x * c for x in (lo, hi)]
    return _caps(min(corners), max(corners))


# ----------------------------------------------------------------------------- the propagation


class _Propagator(fx.Interpreter):
    def __init__(self, qmodel: QuantizedModel, input_moments: Moments, num_std: float, apply: bool = True):
        super().__init__(qmodel.gm, garbage_collect_values=apply)
        self.input_moments = input_moments
        self.num_std = num_std
        self.apply = apply
        self.ranges: dict[str, tuple[float, float]] = {}

    def run_node(self, n):
        self._node = n
        out = super().run_node(n)
        if isinstance(out, Moments):
            shape = _sample_shape(n)
            if shape is not None:
                if out.mean.ndim != len(shape) or any(s not in (1, d) for t in (out.mean, out.var)
                                                      for s, d in zip(t.shape, shape)):
                    raise UnsupportedModelError(
                        f"minmax cannot propagate BN statistics through {n.name} ({n.target}): "
                        f"moments {tuple(out.mean.shape)} do not fit its sample shape {shape}", _HINT)
                out = dataclasses.replace(out, shape=shape)
        return out

    def _unsupported(self, what: str = ""):
        n = self._node
        where = f"module {n.target}" if n.op == "call_module" else f"{n.name} ({n.target})"
        return UnsupportedModelError(f"minmax cannot propagate BN statistics through {where}{what}", _HINT)

    def placeholder(self, target, args, kwargs):
        shape = _sample_shape(self._node)
        m = self.input_moments
        return m if shape is None else _channels(m.mean, m.var, len(shape))

    # ---- modules: quantizers, Conv, Linear --------------------------------------------------
    def call_module(self, target, args, kwargs):
        mod = self.module.get_submodule(target)
        m = args[0]
        if isinstance(mod, ActPerTensorFloat):
            sd = m.var.clamp_min(0).sqrt()
            lo = float((m.mean - self.num_std * sd).min())
            hi = float((m.mean + self.num_std * sd).max())
            if m.hi_cap is not None:
                hi = min(hi, m.hi_cap)
            if m.lo_cap is not None:
                lo = max(lo, m.lo_cap)
            if not self.apply:
                self.ranges[target] = (lo, hi)
            else:
                if target != "act_quant.input":  # the input's range is exact (set_input_range)
                    mod.set_range(lo, hi)
                self.ranges[target] = mod.range()
            return m
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            shape = _sample_shape(self._node)
            if hasattr(mod, "bn_mean"):
                ndim = len(shape) if shape is not None else (3 if isinstance(mod, QuantConv2d) else 1)
                return _channels(mod.bn_mean.clone(), mod.bn_std.clone() ** 2, ndim)
            if not isinstance(m, Moments):
                raise self._unsupported(": its input carries no moments")
            w = mod.weight.detach()
            if isinstance(mod, QuantLinear):
                return self._linear(m, w, mod.bias.detach())
            return self._conv(m, mod, w)
        raise self._unsupported()

    @staticmethod
    def _linear(m: Moments, w, b) -> Moments:
        fin = w.shape[1]
        if m.mean.ndim <= 1:
            mean, var = _expand(m, (fin,))
            return Moments(w @ mean + b, (w * w) @ var)
        shape = tuple(torch.broadcast_shapes(m.mean.shape, m.var.shape))[:-1] + (fin,)
        mean, var = _expand(m, shape)
        return Moments(mean @ w.T + b, var @ (w * w).T)

    def _conv(self, m: Moments, mod, w) -> Moments:
        cin = w.shape[1] * mod.groups
        if m.mean.ndim == 1:  # per-channel (C,) moments of a graph without shape metadata
            m = _channels(m.mean, m.var, 3)
        if m.mean.ndim != 3:
            raise self._unsupported(f": a convolution of moments shaped {tuple(m.mean.shape)}")
        if _spatially_constant(m):
            mu, var = _expand(m, (cin, 1, 1))
            k = w.shape[2:]
            ones = torch.ones(1, cin, *k)
            mean = F.conv2d(ones * mu.view(1, -1, 1, 1), w, mod.bias.detach(), groups=mod.groups)
            var = F.conv2d(ones * var.view(1, -1, 1, 1), w * w, groups=mod.groups)
            return Moments(mean.flatten().view(-1, 1, 1), var.flatten().view(-1, 1, 1))
        size = (cin,) + tuple(m.sizes()[1:])
        mu, var = _expand(m, size)
        conv = functools.partial(F.conv2d, stride=mod.stride, padding=mod.padding,
                                 dilation=mod.dilation, groups=mod.groups)
        return Moments(conv(mu[None], w, mod.bias.detach())[0], conv(var[None], w * w)[0])

    # ---- ATen ops ------------------------------------------------------------------------------
    def call_function(self, target, args, kwargs):
        node = self._node
        if target is operator.getitem:
            if isinstance(args[0], (tuple, list)):
                return args[0][args[1]]
            raise self._unsupported()
        if target is aten.sym_size.int:  # shape arithmetic for view sizes (which are read from the graph)
            shape = _sample_shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            d = int(args[1]) if len(args) > 1 else 0
            return shape[d - 1] if shape is not None and d >= 1 else 1
        if getattr(target, "__module__", None) in ("_operator", "operator", "math") and \
                not any(isinstance(a, Moments) for a in (*args, *kwargs.values())):
            return target(*args, **kwargs)  # arithmetic on sizes
        if target in ops.IDENTITY:
            return args[0]
        if target in ops.RELU:
            return _relu_moments(args[0])
        if target in ops.ACTIVATION:  # ReLU6 / hardtanh / clamp
            lo, hi = ops.clamp_bounds(node)
            m = _relu_moments(args[0]) if lo is not None and lo >= 0 else args[0]
            return Moments(m.mean if hi is None else m.mean.clamp(max=hi), m.var, hi)
        if target in ops.SMOOTH_ACTIVATION:
            return _smooth_moments(target, args[0], tuple(args[1:]), dict(kwargs))
        if target in ops.BATCH_NORM:
            return self._batch_norm(node, args[0])
        if target in ops.ADD or target in _SUB or target in _RSUB:
            return self._add(target, args, kwargs)
        if target in _MUL or target in _DIV:
            return self._mul(target, args)
        if target in ops.CAT:
            return self._cat(args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if target in ops.AVG_POOL or target in ops.MAX_POOL or target in ops.UPSAMPLE_NEAREST \
                or target in ops.UPSAMPLE_BILINEAR:
            return self._spatial(target, args, kwargs)
        if target in ops.RESHAPE:
            out = _sample_shape(node)
            if out is None:  # a graph without shape metadata: keep (the rule before shapes were tracked)
                return self._moments(args[0])
            return _reshape(args[0], out, node)
        if target in ops.PERMUTE:
            return self._permute(target, args)
        if target in ops.SLICE:
            return self._slice(args)
        if target in ops.SPLIT:
            return self._split(target, args, kwargs)
        if target in ops.PAD and ops.is_zero_pad(node):
            return self._pad(args[0], list(args[1]))
        raise self._unsupported()

    def _moments(self, a) -> Moments:
        if not isinstance(a, Moments):
            raise self._unsupported(": its input carries no moments")
        return a

    def _batch_norm(self, node, x) -> tuple | Moments:
        m = self._moments(x)
        _, w, b, rm, rv, eps = ops.bn_args(node)
        get = lambda a, default: default if a is None else self.env[a].detach().float()
        c = m.sizes()[0]
        gamma, beta = get(w, torch.ones(c)), get(b, torch.zeros(c))
        mean, var = get(rm, torch.zeros(c)), get(rv, torch.ones(c))
        s = gamma / torch.sqrt(var + eps)
        view = (-1,) + (1,) * (m.mean.ndim - 1)
        s, beta, mean = s.view(view), beta.view(view), mean.view(view)
        out = Moments((m.mean - mean) * s + beta, m.var * s * s)
        return out if node.target is aten.batch_norm.default else (out, None, None)

    def _add(self, target, args, kwargs) -> Moments:
        a, b = args[0], args[1]
        alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
        if target in _RSUB:  # rsub(x, other, alpha) = other − alpha·x
            a, b, sign = b, a, -1.0
        else:
            sign = -1.0 if target in _SUB else 1.0
        if not isinstance(a, Moments):  # number ± tensor
            mb = self._moments(b)
            coef = sign * float(alpha)
            return Moments(_constant(a, mb, self._node) + coef * mb.mean, coef * coef * mb.var)
        if not isinstance(b, Moments):
            if target in ops.ADD and alpha == 1 and not isinstance(b, torch.Tensor):
                return Moments(a.mean + float(b), a.var)
            return Moments(a.mean + sign * float(alpha) * _constant(b, a, self._node), a.var)
        if sign == 1.0 and alpha == 1:
            return Moments(a.mean + b.mean, a.var + b.var)
        coef = sign * float(alpha)
        return Moments(a.mean + coef * b.mean, a.var + coef * coef * b.var)

    def _mul(self, target, args) -> Moments:
        a, b = args[0], args[1]
        if target in _DIV:
            m = self._moments(a)
            if isinstance(b, Moments):
                raise self._unsupported(": a quotient of two tensors")
            c = _constant(b, m, self._node)
            return Moments(m.mean / c, m.var / (c * c), *_scaled_caps(m, 1.0 / c))
        if isinstance(a, Moments) and isinstance(b, Moments):
            mean = a.mean * b.mean
            var = a.var * b.var + a.var * b.mean ** 2 + b.var * a.mean ** 2
            return Moments(mean, var, *_product_caps(a, b))
        m, c = (a, b) if isinstance(a, Moments) else (b, a)
        m = self._moments(m)
        c = _constant(c, m, self._node)
        return Moments(m.mean * c, m.var * c * c, *_scaled_caps(m, c))

    def _cat(self, parts, dim) -> Moments:
        parts = [self._moments(p) for p in parts]
        d = _sample_dim(dim, parts[0], self._node)
        if d == 0 and all(p.mean.shape[1:] == parts[0].mean.shape[1:] == p.var.shape[1:] for p in parts) \
                and all(p.mean.shape[0] == p.var.shape[0] == p.sizes()[0] for p in parts):
            return Moments(torch.cat([p.mean for p in parts]), torch.cat([p.var for p in parts]))
        parts = [_materialize_dim(p, d) for p in parts]
        other = [list(torch.broadcast_shapes(p.mean.shape, p.var.shape)) for p in parts]
        common = list(torch.broadcast_shapes(*[tuple(s[:d] + [1] + s[d + 1:]) for s in other]))
        means, variances = [], []
        for p, s in zip(parts, other):
            mean, var = _expand(p, tuple(common[:d] + [s[d]] + common[d + 1:]))
            means.append(mean)
            variances.append(var)
        return Moments(torch.cat(means, d), torch.cat(variances, d))

    def _spatial(self, target, args, kwargs) -> Moments:
        m = self._moments(args[0])
        if target is aten.mean.dim:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            full = m.mean.ndim + 1
            dims = range(1, full) if dims is None else [int(d) % full for d in dims]
            if 0 in dims:
                raise self._unsupported(": it averages over the batch")
            sample = sorted(d - 1 for d in dims)
            mean, var = m.mean, m.var
            for d in sample:
                if mean.shape[d] > 1 or var.shape[d] > 1:
                    mean, var = mean.mean(d, keepdim=True), var.mean(d, keepdim=True)
            if not keep:
                mean, var = mean.squeeze(sample) if sample else mean, var.squeeze(sample) if sample else var
            return dataclasses.replace(m, mean=mean, var=var, shape=None)
        if _spatially_constant(m):
            return m
        # spatially varying moments: the op itself on the mean and variance maps
        size = tuple(torch.broadcast_shapes(m.mean.shape, m.var.shape))
        mean, var = _expand(m, size[:1] + tuple(m.sizes()[1:]))
        mean = target(mean[None], *args[1:], **kwargs)
        var = target(var[None], *args[1:], **kwargs)
        return Moments(mean[0], var[0], m.hi_cap, m.lo_cap)

    def _permute(self, target, args) -> Moments:
        m = self._moments(args[0])
        if target is aten.transpose.int:
            a, b = _sample_dim(args[1], m, self._node), _sample_dim(args[2], m, self._node)
            return dataclasses.replace(m, mean=m.mean.transpose(a, b), var=m.var.transpose(a, b), shape=None)
        full = m.mean.ndim + 1
        dims = [int(d) % full for d in args[1]]
        if dims[0] != 0:
            raise self._unsupported(": it moves the batch dimension")
        perm = [d - 1 for d in dims[1:]]
        return dataclasses.replace(m, mean=m.mean.permute(perm), var=m.var.permute(perm), shape=None)

    def _slice(self, args) -> Moments:
        m = self._moments(args[0])
        dim = args[1] if len(args) > 1 else 0
        if int(dim) % (m.mean.ndim + 1) == 0:
            return m  # a slice of the batch keeps the (per-sample) moments
        d = _sample_dim(dim, m, self._node)
        if m.is_broadcast(d) and m.sizes()[d] != 1:
            return m
        m = _materialize_dim(m, d)
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else m.mean.shape[d]
        step = args[4] if len(args) > 4 else 1
        index = (slice(None),) * d + (slice(start, end, step),)
        return Moments(m.mean[index], m.var[index], m.hi_cap, m.lo_cap)

    def _split(self, target, args, kwargs) -> tuple:
        m = self._moments(args[0])
        default_dim = 0
        dim = args[2] if len(args) > 2 else kwargs.get("dim", default_dim)
        d = _sample_dim(dim, m, self._node)
        m = _materialize_dim(m, d)
        if target is aten.chunk.default:
            means, variances = torch.chunk(m.mean, args[1], d), torch.chunk(m.var, args[1], d)
        else:
            means, variances = torch.split(m.mean, args[1], d), torch.split(m.var, args[1], d)
        return tuple(Moments(a, b, m.hi_cap, m.lo_cap) for a, b in zip(means, variances))

    def _pad(self, m, pad: list) -> Moments:
        m = self._moments(m)
        nd = m.mean.ndim
        spec = [0] * (2 * nd)
        for j in range(len(pad) // 2):
            d = nd - 1 - j  # pair j pads the j-th dim from the end
            if d < 0:
                raise self._unsupported(": it pads the batch dimension")
            before, after = int(pad[2 * j]), int(pad[2 * j + 1])
            if (before or after) and (d == 0 or not m.is_broadcast(d)):
                spec[2 * j], spec[2 * j + 1] = before, after
        if not any(spec):
            return m  # border padding of constant maps: the interior statistics
        for j in range(nd):
            if spec[2 * j] or spec[2 * j + 1]:
                m = _materialize_dim(m, nd - 1 - j)
        return Moments(F.pad(m.mean, spec), F.pad(m.var, spec), m.hi_cap, m.lo_cap)


def _input_moments(mean, std) -> Moments:
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    return Moments((0.5 - mean_t) / std_t, (1.0 / 12.0) / std_t ** 2)


@torch.no_grad()
def propagate_moments(qmodel: QuantizedModel, mean, std, num_std: float = 4.0
                      ) -> tuple[dict[str, Moments], dict[str, tuple[float, float]]]:
    """The propagation of :func:`set_ranges_from_bn` without setting any quantizer (for checks).

    Returns:
        (graph node name → :class:`Moments` of its output, for every node whose output is a
        tensor; quantizer name → the (lo, hi) it would be asked to cover, before the quantizer
        widens it to include 0 and rounds it to its grid).

    Raises:
        UnsupportedModelError: as :func:`set_ranges_from_bn`.
    """
    inp = _input_moments(mean, std)
    prop = _Propagator(qmodel, inp, num_std, apply=False)
    with qmodel.float_mode():
        prop.run(inp)
    return {n.name: v for n, v in prop.env.items() if isinstance(v, Moments)}, prop.ranges


@torch.no_grad()
def set_ranges_from_bn(qmodel: QuantizedModel, mean, std, num_std: float = 4.0) -> dict[str, tuple]:
    """Set every activation quantizer's range from BN statistics (see module docstring).

    Args:
        qmodel: the quantized model; its layers carry the folded BNs' β and |γ| (``bn_mean``,
            ``bn_std``, float32 (C,)); BNs left in the graph are read from its get_attr tensors.
        mean, std: the model card's input normalization (length C).
        num_std: k, the half-width of each channel's range in standard deviations.

    Returns:
        quantizer name (``"act_quant.…"``) → (lo, hi) range set, in float units (the network
        input's quantizer is left as it is and reported).

    Raises:
        UnsupportedModelError: an op the propagation has no rule for (the message names the node
            and the op), or a reshape/permute/reduction that mixes the batch with the sample.
    """
    inp = _input_moments(mean, std)
    prop = _Propagator(qmodel, inp, num_std)
    with qmodel.float_mode():
        prop.run(inp)
    return prop.ranges
