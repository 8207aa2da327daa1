"""Spatial and channel relation transforms and ZAQ's feature-level discrepancy.

ZAQ (Liu et al., CVPR 2021, sec. 3.2; REFERENCES.md "ZAQ"), for a feature map
F ∈ R^{C×P} of one image (P = H·W positions), after L2 normalization over channels:

- spatial relation: A = softmax(Fᵀ F) (P×P, softmax over the last axis),
  F' = γ·F·Aᵀ + F;
- channel relation: E = F Fᵀ (C×C), A = softmax(max(E) − E) (max over the last axis,
  softmax over the last axis), F' = γ·A·F + F;

with γ = 0.1. The discrepancy at one position is
L1(spatial(F_Q), spatial(F_P)) + L1(channel(F_Q), channel(F_P)) (mean absolute error),
and the feature term is the weighted sum over positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError

FEATURE_WEIGHTS = ("uniform", "adaptive")


def spatial_relation(f: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """γ·F·softmax(FᵀF)ᵀ + F for each image: (N, C, H, W) float32 → same shape."""
    n, c, h, w = f.shape
    x = f.reshape(n, c, h * w)
    attn = torch.softmax(torch.bmm(x.transpose(1, 2), x), dim=-1)  # (N, P, P)
    return (gamma * torch.bmm(x, attn.transpose(1, 2)) + x).view(n, c, h, w)


def channel_relation(f: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """γ·softmax(max(E) − E)·F + F with E = F·Fᵀ, for each image: (N, C, H, W) float32 → same shape."""
    n, c, h, w = f.shape
    x = f.reshape(n, c, h * w)
    energy = torch.bmm(x, x.transpose(1, 2))  # (N, C, C)
    attn = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
    return (gamma * torch.bmm(attn, x) + x).view(n, c, h, w)


def relation_discrepancy(f_q: torch.Tensor, f_p: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """ZAQ's discrepancy at one position (scalar): L1 of both relation transforms of the
    channel-L2-normalized maps. f_q, f_p: (N, C, H, W) float32 (student, teacher)."""
    f_q, f_p = F.normalize(f_q, dim=1), F.normalize(f_p, dim=1)
    return F.l1_loss(spatial_relation(f_q, gamma), spatial_relation(f_p, gamma)) + \
        F.l1_loss(channel_relation(f_q, gamma), channel_relation(f_p, gamma))


def layer_weights(per_layer: torch.Tensor, mode: str = "uniform") -> torch.Tensor:
    """Weights (L,) of the per-position discrepancies (L,).

    - ``uniform``: all 1 (the authors' code: one α for the sum).
    - ``adaptive`` (**unconfirmed** reading of the paper's per-layer adaptive weights):
      L·softmax(d) of the detached discrepancies d, so positions that currently disagree
      more weigh more and the weights still sum to L (uniform when all d are equal).
    """
    if mode == "uniform":
        return torch.ones_like(per_layer)
    if mode == "adaptive":
        return per_layer.numel() * torch.softmax(per_layer.detach(), dim=0)
    raise ConfigError(f"feature weights must be one of {FEATURE_WEIGHTS}, got {mode!r}")


def feature_discrepancy(feats_q: list[torch.Tensor], feats_p: list[torch.Tensor], gamma: float = 0.1,
                        weights: str = "uniform") -> torch.Tensor:
    """Σ_l w_l·relation_discrepancy(F_Q^l, F_P^l) over matched positions (scalar float32)."""
    if len(feats_q) != len(feats_p) or not feats_q:
        raise ValueError(f"need matching non-empty feature lists, got {len(feats_q)} and {len(feats_p)}")
    d = torch.stack([relation_discrepancy(q, p, gamma) for q, p in zip(feats_q, feats_p)])
    return (layer_weights(d, weights) * d).sum()
