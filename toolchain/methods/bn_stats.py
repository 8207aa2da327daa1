"""BN-statistics losses on the FP (teacher) graph — one hook mechanism, two distances.

For every BatchNorm layer of the teacher, a :class:`~.taps.Tap` captures its input
x (N, C, H, W); the batch statistics μ̂_c = mean over (N, H, W) and σ̂²_c (biased
variance) are compared with the layer's running statistics (μ_c, σ²_c + ε):

- ``l2`` (ZeroQ, Cai et al. CVPR 2020, eq. 3; the baseline GZNQ improves on):
  Σ_layers ( ‖μ̂ − μ‖²/C + ‖σ̂ − σ‖²/C );
- ``kl`` (GZNQ's reading, He et al. arXiv 2101.08430 — unconfirmed, see REFERENCES.md):
  Σ_layers mean_c KL( N(μ̂_c, σ̂²_c) ‖ N(μ_c, σ²_c) )
  = Σ_layers mean_c [ log(σ_c/σ̂_c) + (σ̂²_c + (μ̂_c − μ_c)²) / (2σ²_c) − 1/2 ].
"""

from __future__ import annotations

import copy

import torch
from torch import fx

from ..core.errors import UnsupportedModelError
from ..graph import ops
from ..graph.fx import get_attr_value
from .taps import insert_taps

BN_LOSSES = ("l2", "kl")


def gaussian_kl(mu_hat: torch.Tensor, var_hat: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_hat, var_hat) ‖ N(mu, var)) elementwise (same shapes, float32, nats)."""
    return 0.5 * (torch.log(var / var_hat) + (var_hat + (mu_hat - mu) ** 2) / var - 1.0)


class BNStatistics:
    """Taps on the inputs of every BN layer of an FP GraphModule (modified in place).

    Args:
        gm: the teacher's fx GraphModule (ATen graph with batch_norm nodes).

    Raises:
        UnsupportedModelError: the graph has no BatchNorm.
    """

    def __init__(self, gm: fx.GraphModule):
        bns = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ops.BATCH_NORM]
        if not bns:
            raise UnsupportedModelError("the model has no BatchNorm layer, so it has no BN statistics",
                                        "use --method minmax or a method that does not need BN statistics")
        self.running: list[tuple[torch.Tensor, torch.Tensor]] = []
        for bn in bns:
            a = bn.args
            eps = ops.bn_eps(bn.target, a)
            mean = get_attr_value(gm, a[3].target).detach().float()
            var = get_attr_value(gm, a[4].target).detach().float() + eps
            self.running.append((mean, var))
        self.taps = insert_taps(gm, [bn.args[0] for bn in bns], prefix="bn_tap")

    def __len__(self) -> int:
        return len(self.taps)

    def to(self, device) -> "BNStatistics":
        self.running = [(m.to(device), v.to(device)) for m, v in self.running]
        return self

    def batch_stats(self):
        """[(μ̂ (C,), σ̂² (C,))] of the last forward pass, per BN layer."""
        out = []
        for tap in self.taps:
            x = tap.value
            dims = [d for d in range(x.ndim) if d != 1]
            out.append((x.mean(dim=dims), x.var(dim=dims, unbiased=False)))
        return out

    def loss(self, kind: str = "l2") -> torch.Tensor:
        """The BN-statistics loss of the last forward pass (scalar, see module docstring)."""
        if kind not in BN_LOSSES:
            raise ValueError(f"BN loss must be one of {BN_LOSSES}, got {kind!r}")
        total = 0.0
        for (mu_hat, var_hat), (mu, var) in zip(self.batch_stats(), self.running):
            if kind == "l2":
                total = total + ((mu_hat - mu) ** 2).mean() + ((var_hat.clamp_min(1e-8).sqrt() - var.sqrt()) ** 2).mean()
            else:
                total = total + gaussian_kl(mu_hat, var_hat.clamp_min(1e-8), mu, var).mean()
        return total


def teacher_with_bn_taps(ctx) -> tuple[torch.nn.Module, BNStatistics]:
    """A private copy of the context's frozen FP teacher (eval, on ``ctx.device``) with BN taps inserted.

    Args:
        ctx: a :class:`~toolchain.methods.registry.MethodContext`.
    Returns:
        (teacher fx.GraphModule, its :class:`BNStatistics`).
    Raises:
        UnsupportedModelError: the model has no BatchNorm.
    """
    teacher = ctx.teacher_copy()
    return teacher, BNStatistics(teacher).to(ctx.device)


#: the name of the probed BN-statistics step cost in a schedule's costs (``schedule.costs``)
BN_STEP_COST = "bn_synthesis"


def bn_step_cost(costs: dict[str, float]) -> float:
    """FP-pass units per image of a BN-statistics step in a schedule's ``costs``: the probed
    :data:`BN_STEP_COST`, or 1 (one FP pass) when nothing was probed."""
    return costs.get(BN_STEP_COST, 1.0)


def probe_bn_step_costs(teacher: fx.GraphModule, input_shape: tuple[int, ...], device: torch.device,
                        pass_s: float) -> dict[str, float]:
    """``{BN_STEP_COST: units}`` from :func:`probe_bn_step_units`; empty for a model without BN."""
    units = probe_bn_step_units(teacher, input_shape, device, pass_s)
    return {} if units is None else {BN_STEP_COST: units}


def probe_bn_step_units(teacher: fx.GraphModule, input_shape: tuple[int, ...], device: torch.device,
                        pass_s: float, batch: int = 16) -> float | None:
    """FP-pass units per image of one BN-statistics step on this machine: a forward of a tapped copy
    of ``teacher``, the "l2" BN loss (:meth:`BNStatistics.loss`) and its backward to the images —
    the step of ZeroQ synthesis (:func:`~.synthesis.match_bn_statistics`) and of GZNQ's, timed, not
    assumed. The per-channel batch statistics over every BN input cost about as much as the convs
    themselves: 1.85 passes on ResNet-20 and 2.0 on MobileNetV2 (Xeon, 1 thread), where the schedule
    had counted 1 and MobileNetV2's synthesis ran 2.4x its estimate (docs/time_budget.md).

    Args:
        teacher: the FP GraphModule (not modified: a copy gets the taps).
        input_shape: (C, H, W) of one input.
        device: where the method runs.
        pass_s: seconds of one FP forward+backward per image (:func:`~.schedule.probe_pass_seconds`), > 0.
        batch: images per timed step.

    Returns:
        The step's seconds per image / ``pass_s``, or None when the model has no BatchNorm.
    """
    from .schedule import best_seconds
    tapped = copy.deepcopy(teacher)
    try:
        bn = BNStatistics(tapped).to(device)
    except UnsupportedModelError:
        return None
    x = torch.randn(batch, *input_shape, device=device, requires_grad=True)

    def step():
        tapped(x)
        bn.loss("l2").backward()

    return best_seconds(step, device) / batch / pass_s
