"""Images in a model's normalized input space: the image of [0, 1] pixels, the clamp into it,
and a PNG grid of synthetic images for people to look at.

Every method that makes images (synthesized sets, learned distributions, generators) keeps them
inside :func:`pixel_bounds` with :func:`clamp_pixels` when its ``clamp_to_pixels`` is on: the
deployed input quantizer clips there anyway.
"""

from __future__ import annotations

from pathlib import Path

import torch


def pixel_bounds(mean, std, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (lo, hi) of normalized pixels in [0, 1], shaped (1, C, 1, 1) float32."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


def clamp_pixels(x: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``x`` (N, C, H, W) clamped elementwise into ``bounds`` = (lo, hi) (each broadcastable, e.g.
    (1, C, 1, 1)); ``x`` itself when ``bounds`` is None. Differentiable (gradient 1 inside)."""
    if bounds is None:
        return x
    lo, hi = bounds
    return torch.max(torch.min(x, hi), lo)


def save_grid(images: torch.Tensor, labels: torch.Tensor, mean, std, path: str | Path, *,
              num_classes: int | None = None, per_class: int = 8, scale: int = 1, pad: int = 2) -> tuple[int, int]:
    """Write a PNG grid of synthetic images: row k holds the first ``per_class`` images of class k.

    Args:
        images: (N, C, H, W) float32 in the normalized input space (C = 1 or 3).
        labels: (N,) int64 class of each image.
        mean, std: the normalization to undo (pixels = x·std + mean, clipped to [0, 1]).
        num_classes: rows (default: max label + 1); missing cells stay black.
        scale: integer nearest-neighbour upscaling of each cell.
        pad: black pixels between and around cells.

    Returns:
        (width, height) of the written image in pixels:
        (per_class·(W·scale + pad) + pad, K·(H·scale + pad) + pad).
    """
    import numpy as np
    from PIL import Image
    c, h, w = images.shape[1:]
    k = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pix = (images.detach().cpu().float() * s + m).clamp(0, 1)
    if scale > 1:
        pix = pix.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    ch, cw = h * scale, w * scale
    canvas = np.zeros((k * (ch + pad) + pad, per_class * (cw + pad) + pad, c), dtype=np.uint8)
    for row in range(k):
        idx = (labels == row).nonzero().flatten()[:per_class]
        for col, i in enumerate(idx.tolist()):
            y0, x0 = pad + row * (ch + pad), pad + col * (cw + pad)
            canvas[y0:y0 + ch, x0:x0 + cw] = (pix[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return img.size
