"""Image generators for generative zero-shot quantization (shared by ZAQ and, later, LRQ).

:class:`DFADGenerator` is the unconditional generator of DFAD (Fang et al. 2019) that
ZAQ (Liu et al., CVPR 2021) uses unchanged (REFERENCES.md, "ZAQ")::

    z ~ N(0, I) (N, nz) → Linear(nz → 2·ngf·h0·w0) → view (N, 2·ngf, h0, w0) → BN(2·ngf)
      → [×2 nearest upsample → Conv3×3(2·ngf → c_k) + BN + LeakyReLU(0.2)] × n_up
      → Conv3×3(ngf → C) → Tanh → BN(C, affine=False)

with ngf = 64, so 128 channels after the Linear; every upsampling block keeps 128
channels except the last, which goes to 64. For 32×32 inputs (h0 = w0 = 8, n_up = 2)
this is exactly the published network. Larger inputs get more upsampling blocks
(:func:`upsample_plan`), so the Linear layer stays small (h0, w0 ≤ 8); a size that is
not ``h0·2**n_up`` is reached by a final bilinear resize (e.g. never needed for 32 or 224).

The output is in the model's *normalized* input space (the last BN makes every channel
zero-mean, unit-variance over the batch); the generator runs in train mode always
(its BN layers use batch statistics, as in the authors' code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def upsample_plan(height: int, width: int, max_init: int = 8, min_up: int = 2) -> tuple[int, int, int]:
    """(h0, w0, n_up): the initial map size after the Linear layer and the number of ×2 upsamplings.

    ``n_up`` is the smallest count ≥ ``min_up`` with ``ceil(max(H, W) / 2**n_up) <= max_init``;
    ``h0 = ceil(H / 2**n_up)``, ``w0 = ceil(W / 2**n_up)``. Published case: 32×32 → (8, 8, 2).
    Examples: 8×8 → (2, 2, 2); 224×224 → (7, 7, 5).

    Raises:
        ConfigError: a non-positive size.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"generator needs a positive image size, got {height}x{width}")
    n_up = min_up
    while math.ceil(max(height, width) / 2 ** n_up) > max_init:
        n_up += 1
    return math.ceil(height / 2 ** n_up), math.ceil(width / 2 ** n_up), n_up


class UpBlock(nn.Sequential):
    """×2 nearest upsample → Conv3×3(cin → cout) → BN(cout) → LeakyReLU(0.2): (N, cin, h, w) → (N, cout, 2h, 2w)."""

    def __init__(self, cin: int, cout: int, slope: float = 0.2):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, cout, 3, stride=1, padding=1),
                         nn.BatchNorm2d(cout),
                         nn.LeakyReLU(slope))


class DFADGenerator(nn.Module):
    """The DFAD/ZAQ generator (see module docstring).

    Args:
        image_shape: (C, H, W) of the model's input.
        nz: latent size (ZAQ: 256).
        ngf: base width (64 → 128 channels after the Linear, 64 before the output conv).

    Shapes:
        ``forward(z)``: z (N, nz) float32 → images (N, C, H, W) float32, normalized space.
        N must be ≥ 2 in train mode (batch-statistics BN).
    """

    def __init__(self, image_shape: tuple[int, int, int], nz: int = 256, ngf: int = 64):
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        if nz < 1 or ngf < 1 or c < 1:
            raise ConfigError(f"generator needs nz, ngf, channels >= 1, got {nz}, {ngf}, {c}")
        self.nz, self.image_shape = nz, (c, h, w)
        self.h0, self.w0, n_up = upsample_plan(h, w)
        self.fc = nn.Linear(nz, 2 * ngf * self.h0 * self.w0)
        self.bn0 = nn.BatchNorm2d(2 * ngf)
        widths = [2 * ngf] * n_up + [ngf]
        self.blocks = nn.Sequential(*[UpBlock(widths[i], widths[i + 1]) for i in range(n_up)])
        self.head = nn.Sequential(nn.Conv2d(ngf, c, 3, stride=1, padding=1), nn.Tanh(),
                                  nn.BatchNorm2d(c, affine=False))

    def sample_latent(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): (batch_size, nz) float32."""
        return torch.randn(batch_size, self.nz, device=device, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z.flatten(1)).view(z.shape[0], -1, self.h0, self.w0)
        x = self.blocks(self.bn0(x))
        c, h, w = self.image_shape
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(x)
