"""The one training loop of the methods: players taking turns, with progress, curves and resume.

A *round* is, for each :class:`Player` in order, ``steps`` optimizer steps of that player, then
every player's scheduler stepped once. A step draws a fresh batch inside the player's loss
closure and computes gradients only for that player's parameters (``torch.autograd.grad``), so
a generator step spends nothing on the student's weight gradients and leaves no stale ``.grad``.

- ZAQ's max–min game (Liu et al., CVPR 2021, Alg. 1): the quantized model Q (5 steps) then the
  generator G (1 step, minimizing the negated discrepancy); LRQ's alternation is the same loop.
- Distillation (GZNQ's fine-tuning) is the one-player case: :func:`~.distill.distill_player`.

The loop reports progress (``advance(1, l<player>=…)``; one player: ``l<key>=…`` per logged
loss), records loss curves every ``log_every`` rounds (and the last) — with each player's
gradient norm and gradient-to-parameter norm ratio (``grad_norm``, ``grad_ratio``) — checkpoints every
``checkpoint_every`` rounds through a :class:`~.checkpoint.Checkpointer` (modules, optimizers,
schedulers, round, curves and the RNG states), and with a checkpoint present continues to the
same final state as an uninterrupted run. When it stops, normally or not, the players'
gradients are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .checkpoint import Checkpointer, Resumable


@dataclass
class Player:
    """One side of the loop.

    Attributes:
        name: short name; progress shows ``l<name>`` (e.g. "q" → ``lq``), curves ``<name>_<key>``
            (the one player of a one-player loop: ``<key>``).
        loss: closure computing one fresh batch's losses: ``{"loss": scalar to minimize, other
            scalar tensors to log}``.
        params: the parameters a step updates (each must require grad).
        optimizer: over ``params``.
        scheduler: stepped once per round, or None.
        steps: steps per round (0: the player sits the loop out, e.g. LRQ's generator warm-up).
    """

    name: str
    loss: Callable[[], dict]
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    steps: int = 1


class TrainLoop(Resumable):
    """The round loop (see the module docstring).

    Args:
        players: in the order they move within a round.
        rounds: total rounds (ZAQ paper: 300 epochs × 60 iterations = 18 000).
        modules: name → module whose ``state_dict`` is checkpointed (e.g. the quantized model
            and the generator).
        checkpointer: where checkpoints go (None or a Checkpointer with no directory: none).
        checkpoint_every: rounds between checkpoints (0: never).
        log_every: rounds between loss-curve entries (the last round is always recorded).
        counter: the curves' name of the round index ("round", or "step" for distillation).
        hooks: callables called with the 0-based round index before each round is played (e.g.
            freezing the student's BN after a share of the schedule, :class:`~.student.StudentBN`).

    Raises:
        ValueError: a negative count, log_every < 1 or no player.
    """

    def __init__(self, players: Sequence[Player], rounds: int, modules: dict[str, nn.Module], *,
                 checkpointer: Checkpointer | None = None, checkpoint_every: int = 0, log_every: int = 10,
                 counter: str = "round", hooks: Sequence[Callable[[int], None]] = ()):
        players = list(players)
        if not players or rounds < 0 or checkpoint_every < 0 or log_every < 1 or min(p.steps for p in players) < 0:
            raise ValueError("a loop needs players, rounds/steps/checkpoint_every >= 0 and log_every >= 1")
        self.players, self.rounds, self.modules = players, rounds, modules
        self.checkpointer = checkpointer or Checkpointer(None)
        self.checkpoint_every, self.log_every, self.counter = checkpoint_every, log_every, counter
        self.hooks = list(hooks)
        self.round = 0
        self.curves: dict[str, list] = {counter: []}
        self.resumed_from: int | None = None

    # ---- hooks (tests monkeypatch these) -----------------------------------------
    def after_step(self, player: str, round_index: int, losses: dict) -> None:
        """Called after every optimizer step with the player's name, the 0-based round and its losses."""

    # ---- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"round": self.round,
                "modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizers": {p.name: p.optimizer.state_dict() for p in self.players},
                "schedulers": {p.name: p.scheduler.state_dict() for p in self.players if p.scheduler},
                "curves": self.curves}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for p in self.players:
            p.optimizer.load_state_dict(state["optimizers"][p.name])
            if p.scheduler is not None:
                p.scheduler.load_state_dict(state["schedulers"][p.name])
        self.curves = {k: list(v) for k, v in state["curves"].items()}

    @property
    def position(self) -> int:
        return self.round

    def resume(self, log: dict, key: str) -> bool:
        """:meth:`restore`, noting the round it resumed from as ``log[key]``. Returns whether it did."""
        if not self.restore():
            return False
        log[key] = self.resumed_from
        return True

    def save(self) -> None:
        """Checkpoint now (e.g. a finished warm-up, so a resume skips it)."""
        self.checkpointer.save(self.state_dict())

    # ---- the loop ------------------------------------------------------------------
    @staticmethod
    def _step(player: Player) -> dict:
        player.optimizer.zero_grad(set_to_none=True)
        losses = player.loss()
        grads = torch.autograd.grad(losses["loss"], player.params, allow_unused=True)
        for p, g in zip(player.params, grads):
            p.grad = g
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(TrainLoop._norms(player.params, grads))
        player.optimizer.step()
        return out

    @staticmethod
    @torch.no_grad()
    def _norms(params, grads) -> dict:
        """``grad_norm`` ‖∇‖ over the player's parameters and ``grad_ratio`` ‖∇‖ / ‖θ‖ (before the
        step): the evidence of an optimizer too strong for the parameters' scale (issue 18)."""
        pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
        if not pairs:
            return {}
        gn = torch.sqrt(sum(g.float().pow(2).sum() for _, g in pairs))
        pn = torch.sqrt(sum(p.float().pow(2).sum() for p, _ in pairs))
        return {"grad_norm": float(gn), "grad_ratio": float(gn / pn.clamp_min(1e-12))}

    def run(self, progress=None) -> dict[str, list]:
        """Play the remaining rounds; returns the loss curves (the counter plus one list per
        ``<player>_<key>``, or per ``<key>`` with one player).

        ``progress`` is a task with ``advance(n, **fields)`` (rounds already done on resume are
        advanced at once).
        """
        if progress is not None and self.round:
            progress.advance(self.round)
        try:
            while self.round < self.rounds:
                r = self.round
                for hook in self.hooks:
                    hook(r)
                last = {}
                for player in self.players:
                    for _ in range(player.steps):
                        last[player.name] = self._step(player)
                        self.after_step(player.name, r, last[player.name])
                for player in self.players:
                    if player.scheduler is not None:
                        player.scheduler.step()
                self.round = r + 1
                if r % self.log_every == 0 or self.round == self.rounds:
                    self._record(r, last)
                if progress is not None:
                    progress.advance(1, **self._fields(last))
                if self.checkpoint_every and self.round % self.checkpoint_every == 0 and self.round < self.rounds:
                    self.save()
        finally:
            for player in self.players:
                for p in player.params:
                    p.grad = None
        return self.curves

    def _fields(self, last: dict) -> dict:
        if len(self.players) == 1:
            return {f"l{k}": round(v, 4) for losses in last.values() for k, v in losses.items()
                    if k != "loss" and not k.startswith("grad_")}
        return {f"l{name}": round(v["loss"], 4) for name, v in last.items()}

    def _record(self, r: int, last: dict) -> None:
        self.curves[self.counter].append(r)
        for name, losses in last.items():
            for k, v in losses.items():
                self.curves.setdefault(k if len(self.players) == 1 else f"{name}_{k}", []).append(v)

    def run_with_progress(self, progress, description: str, total: int | None = None) -> dict:
        """``self.run(task)`` under a progress task from ``progress(description, total)`` (total:
        the rounds), always closed."""
        return super().run_with_progress(progress, description, self.rounds if total is None else total)


class WarmUp(TrainLoop):
    """Generator-only rounds before a game (GDFQ's generator warm-up; LRQ, ZAQ's ``warmup_rounds``).

    The game's quantized-model player sits the rounds out (0 steps) and the generator player moves
    as in the game; no scheduler steps (the game's schedules start after it). :meth:`play` runs
    what is left of it and checkpoints the finished warm-up, so a resume skips it.

    Args:
        q, g: the game's players (``q`` is kept only so the checkpoint holds the same optimizers).
        rounds: warm-up rounds (0: none).
        modules, checkpointer, checkpoint_every, log_every: as :class:`TrainLoop`.
    """

    def __init__(self, q: Player, g: Player, rounds: int, modules: dict[str, nn.Module], *,
                 checkpointer: Checkpointer | None = None, checkpoint_every: int = 0, log_every: int = 10):
        super().__init__([Player(q.name, q.loss, q.params, q.optimizer, None, 0),
                          Player(g.name, g.loss, g.params, g.optimizer, None, g.steps)], rounds, modules,
                         checkpointer=checkpointer, checkpoint_every=checkpoint_every, log_every=log_every)

    def play(self, log: dict, progress, description: str) -> None:
        """Resume (``log["resumed_from_warmup_round"]``), play the remaining rounds under a progress
        task (curves in ``log["warmup_curves"]``) and checkpoint the end."""
        self.resume(log, "resumed_from_warmup_round")
        if self.rounds:
            log["warmup_curves"] = self.run_with_progress(progress, description)
            if self.checkpoint_every:
                self.save()
