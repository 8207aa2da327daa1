"""Image generators for generative zero-shot quantization (shared by ZAQ and LRQ).

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

:class:`ConditionalGenerator` is GDFQ's label-conditioned variant (Embedding(y) ⊙ z into the
same body), optionally with a :class:`LargeKernelAttention` block after every upsampling
block — LRQ's long-range generator.

The output is in the model's *normalized* input space (the last BN makes every channel
zero-mean, unit-variance over the batch); the generator runs in train mode always
(its BN layers use batch statistics, as in the authors' code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from .images import clamp_pixels


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
        self.blocks = nn.Sequential(*[self.make_block(widths[i], widths[i + 1]) for i in range(n_up)])
        self.head = nn.Sequential(nn.Conv2d(ngf, c, 3, stride=1, padding=1), nn.Tanh(),
                                  nn.BatchNorm2d(c, affine=False))

    def make_block(self, cin: int, cout: int) -> nn.Module:
        """One upsampling block (N, cin, h, w) → (N, cout, 2h, 2w); subclasses add to it."""
        return UpBlock(cin, cout)

    def sample_latent(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): (batch_size, nz) float32."""
        return torch.randn(batch_size, self.nz, device=device, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (N, nz) → images (N, C, H, W): everything after the (conditioned) latent."""
        x = self.fc(z.flatten(1)).view(z.shape[0], -1, self.h0, self.w0)
        x = self.blocks(self.bn0(x))
        c, h, w = self.image_shape
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(x)


class LargeKernelAttention(nn.Module):
    """Large-kernel attention (LKA) of VAN (Guo et al., "Visual Attention Network", 2022), used by
    LRQ's long-range generator (Luo et al., arXiv 2211.06816; the block layout is our reading,
    REFERENCES.md "LRQ")::

        attn = Conv1×1( DWConv_{k2×k2, dilation d}( DWConv_{k1×k1}(x) ) );   out = x ⊙ attn

    Both depthwise convolutions are "same"-padded, so the output has the input's shape, and one
    output pixel sees a (k1 + (k2 − 1)·d)-wide square of the input (VAN: 5 + 6·3 = 23).

    Args:
        channels: C (the depthwise convolutions have C groups).
        kernel: k1, odd (VAN: 5).
        dilated_kernel: k2, odd (VAN: 7).
        dilation: d ≥ 1 (VAN: 3).

    Shapes:
        (N, C, H, W) float32 → (N, C, H, W) float32.

    Raises:
        ConfigError: an even or non-positive kernel size, dilation < 1 or channels < 1.
    """

    def __init__(self, channels: int, kernel: int = 5, dilated_kernel: int = 7, dilation: int = 3):
        super().__init__()
        if channels < 1 or dilation < 1 or min(kernel, dilated_kernel) < 1 or \
                kernel % 2 == 0 or dilated_kernel % 2 == 0:
            raise ConfigError(f"LKA needs channels >= 1, odd kernel sizes >= 1 and dilation >= 1, got "
                              f"channels={channels}, kernels=({kernel}, {dilated_kernel}), dilation={dilation}")
        self.depthwise = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.dilated = nn.Conv2d(channels, channels, dilated_kernel, padding=dilation * (dilated_kernel // 2),
                                 dilation=dilation, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    @property
    def receptive_field(self) -> int:
        """Width in pixels of the input square one output pixel depends on: k1 + (k2 − 1)·d."""
        return self.depthwise.kernel_size[0] + (self.dilated.kernel_size[0] - 1) * self.dilated.dilation[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last: PyTorch's CPU dilated depthwise convolution is ~2.5x faster in that layout
        a = x.contiguous(memory_format=torch.channels_last)
        return x * self.pointwise(self.dilated(self.depthwise(a)))


class ConditionalGenerator(DFADGenerator):
    """GDFQ's label-conditioned generator (Xu et al., ECCV 2020; REFERENCES.md "GDFQ"), optionally
    with a :class:`LargeKernelAttention` after every upsampling block (LRQ's long-range generator)::

        h = Embedding(K, nz)(y) ⊙ z,  z ~ N(0, I) (N, nz)
          → the :class:`DFADGenerator` body (Linear → BN → [×2 up → Conv3×3 → BN → LeakyReLU (→ LKA)] × n_up)
          → head

    GDFQ's CIFAR generator is exactly this body for 32×32 inputs (128 channels at 8×8, 128 → 64)
    with nz = 100. Heads: ``"gdfq"`` — Conv3×3(ngf → C) → Tanh → BN(C, affine=False), GDFQ's (and
    DFAD's) head, per-channel zero-mean unit-variance over the batch in the normalized input space;
    ``"linear"`` — Conv3×3(ngf → C) only (the caller clamps to the pixel range).

    Args:
        image_shape: (C, H, W) of the model's input.
        num_classes: K.
        nz: latent size (GDFQ: 100).
        ngf: base width (64).
        lka: insert LKA blocks; lka_kernel, lka_dilated_kernel, lka_dilation: their sizes (5, 7, 3).
        head: "gdfq" or "linear".

    Shapes:
        ``forward(z, y)``: z (N, nz) float32, y (N,) int64 in [0, K) → (N, C, H, W) float32.
        N ≥ 2 in train mode (batch-statistics BN).

    Raises:
        ConfigError: num_classes < 1, an unknown head, or bad LKA sizes.
    """

    HEADS = ("gdfq", "linear")

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, nz: int = 100, ngf: int = 64, *,
                 lka: bool = True, lka_kernel: int = 5, lka_dilated_kernel: int = 7, lka_dilation: int = 3,
                 head: str = "gdfq"):
        if num_classes < 1:
            raise ConfigError(f"a conditional generator needs num_classes >= 1, got {num_classes}")
        if head not in self.HEADS:
            raise ConfigError(f"generator head must be one of {self.HEADS}, got {head!r}")
        self.lka = (lka_kernel, lka_dilated_kernel, lka_dilation) if lka else None
        super().__init__(image_shape, nz=nz, ngf=ngf)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, nz)
        if head == "linear":
            self.head = self.head[0]

    def make_block(self, cin: int, cout: int) -> nn.Module:
        if self.lka is None:
            return super().make_block(cin, cout)
        return nn.Sequential(UpBlock(cin, cout), LargeKernelAttention(cout, *self.lka))

    def sample_labels(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """y uniform over the classes (GDFQ): (batch_size,) int64."""
        return torch.randint(0, self.num_classes, (batch_size,), device=device, generator=generator)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed(y) * z.flatten(1))


class GeneratorSampler:
    """Fresh batches from a generator, clamped into the pixel range: what the players of ZAQ and
    LRQ train on.

    Args:
        generator: a :class:`DFADGenerator` or a :class:`ConditionalGenerator` (train mode).
        batch_size: images per batch.
        device: where latents (and labels) are drawn.
        bounds: (lo, hi) of :func:`~.images.pixel_bounds`, or None for no clamp.
    """

    def __init__(self, generator: DFADGenerator, batch_size: int, device=None, bounds=None):
        self.generator, self.batch_size, self.device, self.bounds = generator, batch_size, device, bounds

    def __call__(self, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x (N, C, H, W) float32, normalized input space, clamped; y (N,) int64 labels, or None
        for an unconditional generator). A conditional generator draws y first, then z.
        ``grad``: whether x is differentiable in the generator's parameters."""
        g, n = self.generator, self.batch_size
        with torch.set_grad_enabled(grad):
            if isinstance(g, ConditionalGenerator):
                y = g.sample_labels(n, self.device)
                return clamp_pixels(g(g.sample_latent(n, self.device), y), self.bounds), y
            return clamp_pixels(g(g.sample_latent(n, self.device)), self.bounds), None
