"""Image priors applied as augmentation to synthetic batches (DeepInversion, Yin et al., CVPR 2020,
sec. 3.2: random jitter and flipping), used by GZNQ's synthesis and fine-tuning. (On LRQ's
quantized-model batches they did not help: ``recipes/lrq.toml``.)"""

from __future__ import annotations

import torch


def jitter_flip(x: torch.Tensor, max_shift: int = 0, flip: bool = False) -> torch.Tensor:
    """Roll the (N, C, H, W) batch by one random (dy, dx) in [−max_shift, max_shift]² (pixels,
    wrapping around) and flip it horizontally with probability 1/2; returns a new tensor of the
    same shape and dtype (``x`` itself when neither applies)."""
    if max_shift > 0:
        dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if flip and torch.rand(()) < 0.5:
        x = torch.flip(x, dims=(-1,))
    return x
