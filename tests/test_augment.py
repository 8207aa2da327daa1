"""The shared image priors (jitter and flip) used on synthetic batches by GZNQ and LRQ."""

from __future__ import annotations

import torch

from toolchain.methods.augment import jitter_flip


def test_no_prior_is_the_identity():
    x = torch.randn(2, 3, 5, 5)
    assert jitter_flip(x) is x


def test_jitter_is_a_wrapping_roll_within_the_shift_and_flip_mirrors_half_the_time():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    torch.manual_seed(0)
    rolls = set()
    for _ in range(60):
        y = jitter_flip(x, max_shift=2)
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y, torch.roll(x, (dy, dx), dims=(-2, -1)))]
        assert len(match) == 1  # one roll of the whole batch, never more than 2 px
        rolls.add(match[0])
    assert len(rolls) > 10  # the shifts vary
    outs = [jitter_flip(x, flip=True) for _ in range(200)]
    flips = [torch.equal(y, torch.flip(x, dims=(-1,))) for y in outs]
    assert all(f or torch.equal(y, x) for y, f in zip(outs, flips))  # mirrored or untouched
    assert 60 < sum(flips) < 140
