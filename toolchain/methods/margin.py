"""LRQ's Adversarial Margin Add (AMA): an additive angular margin on the FP classifier's target logit.

LRQ (Luo et al., arXiv 2211.06816) adds an angular margin between a synthetic sample's feature
vector and its class centre inside the generator's classification loss: the margin enlarges the
intra-class angle, the cross-entropy works to shrink it — an adversarial pair (REFERENCES.md
"LRQ"; the ArcFace form below is our reading, unconfirmed).

With f (N, D) the input of the FP model's final Linear (the penultimate feature), W (K, D) its
weight (row W_k: the "class centre" direction of class k) and b (K,) its bias,
cos θ_k = f·W_k / (‖f‖‖W_k‖). The target logit of sample i with label y_i becomes

- ``scale = 0`` (default, "natural"): ‖f‖‖W_y‖·cos(θ_y + m) + b_y, every other logit unchanged
  (f·W_k + b_k). With m = 0 this is exactly the FP model's logit, so the margin is the only change.
- ``scale = s > 0`` (ArcFace, Deng et al. CVPR 2019): every logit is s·cos θ_k (no bias), the
  target s·cos(θ_y + m).

cos(θ + m) = cos θ·cos m − sin θ·sin m for θ + m ≤ π; beyond (θ > π − m, where cos(θ + m) would
turn back up) ArcFace's monotone continuation cos θ − m·sin m is used, as in the ArcFace code.

:class:`ClassifierTap` finds the final Linear of an FP ATen graph and taps its input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx

from ..core.errors import UnsupportedModelError
from ..graph import ops
from ..graph.fx import get_attr_value
from .taps import insert_taps


def add_angular_margin(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       target: torch.Tensor, margin: float, scale: float = 0.0) -> torch.Tensor:
    """Logits with the additive angular margin on each sample's target class (module docstring).

    Args:
        features: f, (N, D) float32.
        weight: W, (K, D) float32; bias: (K,) float32 or None.
        target: (N,) int64 in [0, K).
        margin: m in radians, 0 ≤ m < π (0 with ``scale = 0``: the plain logits f·Wᵀ + b).
        scale: 0 for the natural scale ‖f‖‖W_y‖ (bias kept), s > 0 for ArcFace's fixed scale.

    Returns:
        (N, K) float32 logits, differentiable in ``features`` (and ``weight``/``bias``).

    Raises:
        ValueError: mismatched shapes, a margin outside [0, π) or a negative scale.
    """
    if features.ndim != 2 or weight.ndim != 2 or features.shape[1] != weight.shape[1] or \
            target.shape != features.shape[:1]:
        raise ValueError(f"AMA needs features (N, D), weight (K, D), target (N,), got {tuple(features.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(target.shape)}")
    if not 0.0 <= margin < math.pi or scale < 0:
        raise ValueError(f"AMA needs 0 <= margin < pi and scale >= 0, got {margin}, {scale}")
    f_norm = features.norm(dim=1, keepdim=True).clamp_min(1e-12)       # (N, 1)
    w_norm = weight.norm(dim=1).clamp_min(1e-12)                        # (K,)
    cos = (features @ weight.t()) / (f_norm * w_norm)                   # (N, K)
    cos_y = cos.gather(1, target[:, None]).clamp(-1.0, 1.0)             # (N, 1)
    sin_y = (1.0 - cos_y * cos_y).clamp_min(1e-12).sqrt()
    shifted = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    shifted = torch.where(cos_y > math.cos(math.pi - margin), shifted, cos_y - margin * math.sin(margin))
    if scale > 0:
        logits = scale * cos
        return logits.scatter(1, target[:, None], scale * shifted)
    logits = features @ weight.t()
    if bias is not None:
        logits = logits + bias
    mag = f_norm * w_norm[target][:, None]
    new_y = mag * shifted + (bias[target][:, None] if bias is not None else 0.0)
    return logits.scatter(1, target[:, None], new_y)


def classifier_node(gm: fx.GraphModule) -> fx.Node:
    """The Linear node whose output is the graph's output (through reshapes/identities).

    Raises:
        UnsupportedModelError: the output is not produced by a Linear (no classifier head to put
            the margin on).
    """
    out = next(n for n in gm.graph.nodes if n.op == "output")
    n = out.args[0]
    while isinstance(n, (tuple, list)) and len(n) == 1:
        n = n[0]
    while isinstance(n, fx.Node) and n.op == "call_function" and \
            (n.target in ops.RESHAPE or n.target in ops.IDENTITY) and n.target not in ops.LINEAR:
        n = n.args[0]
    if not (isinstance(n, fx.Node) and n.op == "call_function" and n.target in ops.LINEAR
            and isinstance(n.args[1], fx.Node) and n.args[1].op == "get_attr"):
        raise UnsupportedModelError("the model's output is not a Linear layer, so there is no classifier "
                                    "to add LRQ's angular margin to", "set ama_margin = 0")
    return n


class ClassifierTap:
    """A tap on the input of an FP graph's final Linear (modified in place) plus its weight and bias.

    Attributes:
        weight: (K, D) float32 (detached, on the graph's device); bias: (K,) float32 or None.
        node_name: the Linear node's name.

    Raises:
        UnsupportedModelError: see :func:`classifier_node`.
    """

    def __init__(self, gm: fx.GraphModule, prefix: str = "classifier_tap"):
        node = classifier_node(gm)
        self.node_name = node.name
        self.weight = get_attr_value(gm, node.args[1].target).detach()
        b = node.args[2] if len(node.args) > 2 else None
        self.bias = get_attr_value(gm, b.target).detach() if isinstance(b, fx.Node) else None
        (self.tap,) = insert_taps(gm, [node.args[0]], prefix=prefix)

    def features(self) -> torch.Tensor:
        """The penultimate feature f of the last forward pass: (N, D) float32 (with grad)."""
        return self.tap.value.flatten(1)

    def margin_logits(self, target: torch.Tensor, margin: float, scale: float = 0.0) -> torch.Tensor:
        """:func:`add_angular_margin` on the last forward pass's features: (N, K) float32."""
        return add_angular_margin(self.features(), self.weight, self.bias, target, margin, scale)


def margin_cross_entropy(tap: ClassifierTap, logits: torch.Tensor, target: torch.Tensor, margin: float,
                         scale: float = 0.0) -> torch.Tensor:
    """CE of the margin logits (plain ``logits`` when margin = 0 and scale = 0): scalar float32 (nats)."""
    if margin == 0 and scale == 0:
        return F.cross_entropy(logits, target)
    return F.cross_entropy(tap.margin_logits(target, margin, scale), target)
