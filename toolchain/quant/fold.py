"""Batch-norm folding (Jacob et al., CVPR 2018, sec. 3.2; Krishnamoorthi 2018, eq. 19).

For y = BN(conv(x)) with BN in inference mode,
``W' = W · γ/√(σ² + ε)`` (per output channel) and ``b' = (b − μ)·γ/√(σ² + ε) + β``.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor | None,
            beta: torch.Tensor | None, running_mean: torch.Tensor, running_var: torch.Tensor,
            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold BN parameters into a Conv/Linear layer.

    Args:
        weight: (Cout, ...) float32 layer weight.
        bias: (Cout,) or None.
        gamma, beta: BN affine parameters (Cout,), or None when BN has ``affine=False``.
        running_mean, running_var: BN running statistics (Cout,).
        eps: BN epsilon.

    Returns:
        (folded weight, same shape as ``weight``; folded bias (Cout,)), float32.
    """
    cout = weight.shape[0]
    gamma = torch.ones(cout) if gamma is None else gamma.float()
    beta = torch.zeros(cout) if beta is None else beta.float()
    bias = torch.zeros(cout) if bias is None else bias.float()
    inv = gamma / torch.sqrt(running_var.float() + eps)
    w = weight.float() * inv.reshape([-1] + [1] * (weight.ndim - 1))
    b = (bias - running_mean.float()) * inv + beta
    return w, b
