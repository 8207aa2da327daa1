"""Block reconstruction on synthetic images: the step any method can end with (``reconstruct``).

``adaround`` — BRECQ (Li et al., ICLR 2021) on the deploy scheme, data-free as in GENIE (Jeon
et al., CVPR 2023): block by block (:func:`toolchain.quant.blocks.partition`: residual blocks,
single layers elsewhere), in graph order,

1. the block's input is the *quantized* model's value at the cut before it (earlier blocks
   already reconstructed), its target the FP (BN-folded) model's value at the cut after it on the
   FP input (BRECQ sec. 3.2; AdaRound's "asymmetric reconstruction", eq. 25);
2. each weight's rounding is learned (:class:`toolchain.quant.adaround.AdaRoundWeightQuant`,
   AdaRound eq. 22–24) on ``Σ_c (ŷ − y)² + λ·f_reg(β)`` (BRECQ's ``lp_loss`` with p = 2 summed
   over channels and averaged over the rest; λ = ``round_weight``; no regularizer for the first
   ``warmup`` of the steps, then β annealed linearly from ``beta_start`` to ``beta_end``), with
   Adam (``round_lr``); optionally the per-channel weight step sizes learn jointly with the rounding
   (GENIE-M, Jeon et al., CVPR 2023, sec. 3.3: ``ŵ = s·clamp(B + h(α))`` with the base
   ``B = ⌊w/s₀⌋`` fixed at the start, Adam at ``weight_scale_lr`` with cosine decay; 0: off);
3. the step sizes of the block's activation quantizers learn with it (LSQ gradient, Adam at
   ``scale_lr`` with cosine decay, as BRECQ's activation reconstruction; 0 keeps them fixed); the
   network input's quantizer keeps its exact range;
4. optionally QDrop (Wei et al., ICLR 2022): each activation quantizer of the block, and the
   block's input, passes the FP value instead of the quantized one for a random ``drop`` share of
   the elements during training (never at evaluation);
5. the learned codes are baked into the layer weights (:func:`toolchain.quant.adaround.bake`),
   so the exported model holds exactly them;
6. a block whose output error on the set is higher after than before is restored to its
   round-to-nearest state (``BlockLog.kept`` False): never worse than not reconstructing it.

Before the first block the weight scales can be set by BRECQ's MSE search (``weight_init``).
The images come from the method (:meth:`~.registry.Method.reconstruction_images`: its own
synthetic set when it has one, else a ZeroQ set of ``images`` images). After each block a
checkpoint is written; a re-run resumes after the last finished block.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..quant import adaround
from ..quant.blocks import Block, partition, tensors_of
from ..quant.model import QuantizedModel
from .checkpoint import Checkpointer
from .config import Settings, setting

WEIGHT_INITS = ("mse", "minmax")


@dataclass(frozen=True)
class ReconstructionConfig(Settings):
    """Settings of block reconstruction (the ``recon`` group of every method's config).

    Attributes:
        steps: optimizer steps per block (BRECQ: 20,000; the ``paper`` recipes use that).
        batch: images per step (BRECQ: 32).
        images: synthetic images to reconstruct on, when the method has no synthetic set of its own.
        round_lr: Adam learning rate of the rounding logits (BRECQ: 1e-3).
        scale_lr: Adam learning rate of the activation step sizes (BRECQ: 4e-5; 0: fixed).
        weight_scale_lr: Adam learning rate of the per-channel weight step sizes, learned with the
            rounding (GENIE-M: 1e-4; 0: fixed, as AdaRound and BRECQ).
        round_weight: λ, the rounding regularizer's weight (BRECQ: 0.01).
        warmup: share of the steps without the regularizer (AdaRound/BRECQ: 0.2).
        beta_start, beta_end: the regularizer's β, annealed linearly after the warm-up (20 → 2).
        block_layers: merge consecutive blocks until each holds at least this many layers.
        weight_init: "mse" (BRECQ's clipped-scale search, p = 2.4) or "minmax" (keep the scales).
        drop: QDrop's probability of passing an activation unquantized during training (QDrop: 0.5;
            0: off).
    """

    steps: int = setting(1000, ge=1)
    batch: int = setting(32, ge=1)
    images: int = setting(256, ge=2)
    round_lr: float = setting(1e-3, gt=0)
    scale_lr: float = setting(4e-5, ge=0)
    weight_scale_lr: float = setting(0.0, ge=0)
    round_weight: float = setting(0.01, ge=0)
    warmup: float = setting(0.2, ge=0, lt=1)
    beta_start: float = setting(20.0, gt=0)
    beta_end: float = setting(2.0, gt=0)
    block_layers: int = setting(1, ge=1)
    weight_init: str = setting("mse", choices=WEIGHT_INITS)
    drop: float = setting(0.5, ge=0, le=1)


@dataclass
class BlockLog:
    """What reconstructing one block did: its layers, the loss before/after (mean squared error of
    its output against the FP block's, on the whole set), the seconds it took, and whether the
    learned state was kept (False: it was worse than before and the block was restored)."""

    name: str
    layers: list[str]
    mse_before: float
    mse_after: float
    seconds: float
    kept: bool = True

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": self.layers, "mse_before": self.mse_before,
                "mse_after": self.mse_after, "seconds": round(self.seconds, 3), "kept": self.kept}


@dataclass
class ReconstructionLog:
    """The reconstruction's record in the run log (``log.json`` → ``reconstruction``)."""

    kind: str
    blocks: list[BlockLog] = field(default_factory=list)
    resumed_after: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "resumed_after": self.resumed_after, "seconds": round(self.seconds, 3),
                "blocks": [b.to_dict() for b in self.blocks]}


def beta_at(step: int, cfg: ReconstructionConfig) -> float | None:
    """The regularizer's β at ``step`` (0-based), None during the warm-up (AdaRound sec. 5)."""
    warm = int(cfg.warmup * cfg.steps)
    if step < warm:
        return None
    rel = (step - warm) / max(cfg.steps - warm, 1)
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1.0 - rel)


def _rec_loss(pred, target) -> torch.Tensor:
    """BRECQ's ``lp_loss`` (p = 2): squared error summed over dim 1, averaged over the rest."""
    total = 0.0
    for p, t in zip(tensors_of(pred), tensors_of(target)):
        d = (p - t).pow(2)
        total = total + (d.sum(1) if d.ndim > 1 else d).mean()
    return total


def _batched(fn: Callable, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``fn`` over ``x`` in batches, no grad; the single-tensor (or first tensor) outputs concatenated."""
    with torch.no_grad():
        return torch.cat([tensors_of(fn(x[i:i + batch]))[0] for i in range(0, len(x), batch)])


class _QDrop:
    """Forward hooks passing the FP input of an activation quantizer for a ``p`` share of elements."""

    def __init__(self, modules, p: float):
        self.handles = [m.register_forward_hook(self._hook) for m in modules] if p > 0 else []
        self.p = p

    def _hook(self, module, inputs, out):
        if not torch.is_grad_enabled():
            return out
        return torch.where(torch.rand_like(out) < self.p, inputs[0], out)

    def remove(self):
        for h in self.handles:
            h.remove()


def _block_state(qmodel: QuantizedModel, block: Block) -> dict[str, dict]:
    """A copy of the state of ``block``'s layers and activation quantizers (weights, biases, scales)."""
    return {name: {k: v.detach().clone() for k, v in qmodel.gm.get_submodule(name).state_dict().items()}
            for name in (*block.layers, *block.act_quantizers)}


def _restore_block(qmodel: QuantizedModel, saved: dict[str, dict]) -> None:
    with torch.no_grad():
        for name, state in saved.items():
            qmodel.gm.get_submodule(name).load_state_dict(state)


def _block_output(block: Block, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    """(the block's output on ``x``, its mean squared error against ``y``)."""
    out = _batched(block.module, x, batch)
    return out, float((out - y).pow(2).mean())


def reconstruct_block(block: Block, qmodel: QuantizedModel, x_q: torch.Tensor, x_fp: torch.Tensor,
                      y_fp: torch.Tensor, cfg: ReconstructionConfig, task=None) -> None:
    """Learn the rounding of ``block``'s layers (and its activation step sizes) so that
    ``block(x_q) ≈ y_fp``; bake the codes into the weights.

    Args:
        block: a block of ``qmodel`` (:func:`toolchain.quant.blocks.partition`).
        x_q: (N, ...) float32, the quantized model's input to the block.
        x_fp: (N, ...) float32, the FP model's input to it (QDrop mixes it in; same shape as x_q).
        y_fp: (N, ...) float32, the FP block's output on ``x_fp``.
        cfg: the settings.
        task: optional progress task, advanced once per step with ``loss=…``.
    """
    from .student import INPUT_QUANTIZER
    layers = {name: qmodel.gm.get_submodule(name) for name in block.layers}
    ada = [adaround.attach(layer) for layer in layers.values()]
    saved_grad = {id(p): p.requires_grad for p in qmodel.parameters()}
    aqs = [qmodel.gm.get_submodule(n) for n in block.act_quantizers if n != INPUT_QUANTIZER]
    scales = [q.scale for q in aqs] if cfg.scale_lr > 0 else []
    for s in scales:
        s.requires_grad_(True)
    params_w = {id(p) for layer in layers.values() for p in (layer.weight, layer.bias)}
    for p in qmodel.parameters():
        if id(p) in params_w:
            p.requires_grad_(False)
    opt = torch.optim.Adam([a.alpha for a in ada], lr=cfg.round_lr)
    groups = [{"params": scales, "lr": cfg.scale_lr}] if scales else []
    if cfg.weight_scale_lr > 0:
        for a in ada:
            a.learn_scale(True)
        groups.append({"params": [a.scale for a in ada], "lr": cfg.weight_scale_lr})
    opt_s = torch.optim.Adam(groups) if groups else None
    sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, cfg.steps, eta_min=0.0) if opt_s else None
    drop = _QDrop(aqs, cfg.drop)
    n = len(x_q)
    try:
        for step in range(cfg.steps):
            idx = torch.randint(0, n, (min(cfg.batch, n),))
            xin = x_q[idx]
            if cfg.drop > 0:
                xin = torch.where(torch.rand_like(xin) < cfg.drop, x_fp[idx], xin)
            rec = _rec_loss(block.module(xin), y_fp[idx])
            beta = beta_at(step, cfg)
            loss = rec
            if beta is not None and cfg.round_weight > 0:
                loss = rec + cfg.round_weight * sum(a.regularizer(beta) for a in ada)
            opt.zero_grad(set_to_none=True)
            if opt_s:
                opt_s.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if opt_s:
                opt_s.step()
                sched_s.step()
            if task is not None:
                task.advance(1, loss=float(rec.detach()))
    finally:
        drop.remove()
        for layer in layers.values():
            adaround.bake(layer)
        for p in qmodel.parameters():
            p.requires_grad_(saved_grad.get(id(p), p.requires_grad))


def adaround_blocks(qmodel: QuantizedModel, images: torch.Tensor, cfg: ReconstructionConfig, *,
                    reference: QuantizedModel | None = None, progress=None,
                    checkpointer: Checkpointer | None = None) -> ReconstructionLog:
    """Reconstruct every block of ``qmodel`` in order (see the module docstring); in place.

    Args:
        qmodel: the quantized model, activation ranges calibrated, on the device of ``images``.
        images: (N, C, H, W) float32 synthetic images in the normalized input space (N >= 2).
        cfg: the settings.
        reference: the FP model in the same structure (``quantize_graph`` of the FP program; run in
            float mode, never modified) whose block outputs are the targets; default: a copy of
            ``qmodel`` as it is now (right when its weights are still the FP weights, as after
            calibration; a fine-tuned student needs the FP model passed).
        progress: ``progress(description, total) -> task`` (as :attr:`MethodContext.progress`).
        checkpointer: after each block, the model's state and the block count; a re-run resumes.

    Returns:
        The per-block record.
    """
    t0 = time.perf_counter()
    log = ReconstructionLog(kind="adaround")
    ckpt = checkpointer or Checkpointer(None)
    reference = copy.deepcopy(qmodel) if reference is None else reference
    blocks = partition(qmodel, cfg.block_layers)
    fp_blocks = partition(reference, cfg.block_layers)
    if [b.layers for b in blocks] != [b.layers for b in fp_blocks]:
        raise ValueError("the reference model's blocks differ from the quantized model's")
    state = ckpt.load()
    done = 0
    if state is not None:
        qmodel.load_state_dict(state["qmodel"])
        done = int(state["done"])
        log.blocks = [BlockLog(**b) for b in state["blocks"]]
        log.resumed_after = done
    elif cfg.weight_init == "mse":
        for layer in qmodel.layers().values():
            adaround.mse_weight_scale(layer.weight_quant, layer.weight.detach())
    qmodel.eval()
    reference.eval()
    x_q = x_fp = images
    with reference.float_mode():
        for block, fp_block in zip(blocks[:done], fp_blocks):  # the inputs of the first unfinished block
            x_fp = _batched(fp_block.module, x_fp, cfg.batch)
            x_q = _batched(block.module, x_q, cfg.batch)
    task = progress(f"reconstructing {len(blocks)} blocks (AdaRound)", (len(blocks) - done) * cfg.steps) \
        if progress else None
    try:
        for block, fp_block in zip(blocks[done:], fp_blocks[done:]):
            tb = time.perf_counter()
            with reference.float_mode():
                y_fp = _batched(fp_block.module, x_fp, cfg.batch)
            out_before, before = _block_output(block, x_q, y_fp, cfg.batch)
            saved = _block_state(qmodel, block)
            reconstruct_block(block, qmodel, x_q, x_fp, y_fp, cfg, task)
            out, after = _block_output(block, x_q, y_fp, cfg.batch)
            kept = after <= before
            if not kept:  # never worse than round-to-nearest on the reconstruction set
                _restore_block(qmodel, saved)
                out = out_before
            x_q, x_fp = out, y_fp
            log.blocks.append(BlockLog(block.name, block.layers, before, after, time.perf_counter() - tb, kept))
            ckpt.save({"qmodel": qmodel.state_dict(), "done": block.index + 1,
                       "blocks": [b.to_dict() for b in log.blocks]})
    finally:
        if task is not None:
            task.close()
    ckpt.clear()
    log.seconds = time.perf_counter() - t0
    return log


#: ``reconstruct`` setting → the step (None: no reconstruction)
RECONSTRUCTIONS: dict[str, Callable | None] = {"none": None, "adaround": adaround_blocks}
