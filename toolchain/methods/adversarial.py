"""The adversarial max–min loop of generative zero-shot quantization (ZAQ; reused by LRQ).

A *round* is ``student_steps`` steps of the student player (the quantized model, which
minimizes the teacher–student discrepancy on generated images) followed by
``generator_steps`` steps of the generator player (which minimizes its own loss —
for ZAQ the negated discrepancy, so it maximizes it). ZAQ: 5 student steps, 1 generator
step per round (Liu et al., CVPR 2021, Alg. 1; the authors' code).

Each player brings a loss closure, the parameters it updates, an optimizer and an optional
learning-rate scheduler stepped once per round. A step computes gradients only for the
player's own parameters (``torch.autograd.grad``), so a generator step does not spend
time on the student's weight gradients and leaves no stale ``.grad`` behind.

The loop reports progress (``advance(1, lq=…, lg=…)`` once per round), records loss curves
every ``log_every`` rounds, checkpoints every ``checkpoint_every`` rounds through a
:class:`~.checkpoint.Checkpointer` (modules, optimizers, schedulers, round, curves, RNG
states) and, when a checkpoint exists, continues from it to the same final state as an
uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .checkpoint import Checkpointer, Resumable


@dataclass
class Player:
    """One side of the game.

    Attributes:
        name: short name; progress shows ``l<name>`` (e.g. "q" → ``lq``), curves ``<name>_<key>``.
        loss: closure computing one fresh batch's losses: ``{"loss": scalar to minimize, other
            scalar tensors to log}``.
        params: the parameters a step updates (each must require grad).
        optimizer: over ``params``.
        scheduler: stepped once per round, or None.
    """

    name: str
    loss: Callable[[], dict]
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object | None = None


class MaxMinGame(Resumable):
    """The round loop (see module docstring).

    Args:
        student, generator: the two players (the student moves first in each round).
        rounds: total rounds (ZAQ paper: 300 epochs × 60 iterations = 18 000).
        modules: name → module whose ``state_dict`` is checkpointed (e.g. the quantized model
            and the generator).
        student_steps, generator_steps: steps per round (ZAQ: 5 and 1).
        checkpointer: where checkpoints go (None or a Checkpointer with no directory: none).
        checkpoint_every: rounds between checkpoints (0: never).
        log_every: rounds between loss-curve entries (the last round is always recorded).
    """

    def __init__(self, student: Player, generator: Player, rounds: int, modules: dict[str, nn.Module],
                 student_steps: int = 5, generator_steps: int = 1, checkpointer: Checkpointer | None = None,
                 checkpoint_every: int = 0, log_every: int = 10):
        if rounds < 0 or student_steps < 0 or generator_steps < 0 or checkpoint_every < 0 or log_every < 1:
            raise ValueError("rounds/steps/checkpoint_every must be >= 0 and log_every >= 1")
        self.student, self.generator = student, generator
        self.rounds, self.modules = rounds, modules
        self.student_steps, self.generator_steps = student_steps, generator_steps
        self.checkpointer = checkpointer or Checkpointer(None)
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.round = 0
        self.curves: dict[str, list] = {"round": []}
        self.resumed_from: int | None = None

    # ---- hooks (tests monkeypatch these) -----------------------------------------
    def after_step(self, player: str, round_index: int, losses: dict) -> None:
        """Called after every optimizer step with the player's name, the 0-based round and its losses."""

    # ---- state ---------------------------------------------------------------------
    def _players(self):
        return (self.student, self.generator)

    def state_dict(self) -> dict:
        return {"round": self.round,
                "modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizers": {p.name: p.optimizer.state_dict() for p in self._players()},
                "schedulers": {p.name: p.scheduler.state_dict() for p in self._players() if p.scheduler},
                "curves": self.curves}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for p in self._players():
            p.optimizer.load_state_dict(state["optimizers"][p.name])
            if p.scheduler is not None:
                p.scheduler.load_state_dict(state["schedulers"][p.name])
        self.curves = {k: list(v) for k, v in state["curves"].items()}

    @property
    def position(self) -> int:
        return self.round

    # ---- the loop ------------------------------------------------------------------
    @staticmethod
    def _step(player: Player) -> dict:
        player.optimizer.zero_grad(set_to_none=True)
        losses = player.loss()
        grads = torch.autograd.grad(losses["loss"], player.params, allow_unused=True)
        for p, g in zip(player.params, grads):
            p.grad = g
        player.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def run(self, progress=None) -> dict[str, list]:
        """Play the remaining rounds; returns the loss curves (``round`` plus ``<player>_<key>`` lists).

        ``progress`` is a task with ``advance(n, **fields)`` (rounds already done on resume are
        advanced at once).
        """
        if progress is not None and self.round:
            progress.advance(self.round)
        while self.round < self.rounds:
            r = self.round
            last = {}
            for player, steps in ((self.student, self.student_steps), (self.generator, self.generator_steps)):
                for _ in range(steps):
                    last[player.name] = self._step(player)
                    self.after_step(player.name, r, last[player.name])
            for player in self._players():
                if player.scheduler is not None:
                    player.scheduler.step()
            self.round = r + 1
            if r % self.log_every == 0 or self.round == self.rounds:
                self._record(r, last)
            if progress is not None:
                progress.advance(1, **{f"l{name}": round(v["loss"], 4) for name, v in last.items()})
            if self.checkpoint_every and self.round % self.checkpoint_every == 0 and self.round < self.rounds:
                self.checkpointer.save(self.state_dict())
        return self.curves

    def _record(self, r: int, last: dict) -> None:
        self.curves["round"].append(r)
        for name, losses in last.items():
            for k, v in losses.items():
                self.curves.setdefault(f"{name}_{k}", []).append(v)
