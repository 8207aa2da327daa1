"""Image preprocessing from the model card: resize, centre-crop, normalize.

Matches torchvision's ``Resize(resize)`` (shorter side, bilinear on PIL images),
``CenterCrop((H, W))``, ``ToTensor()`` and ``Normalize(mean, std)``, computed with
Pillow and numpy only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import DataError
from ..core.meta import ModelMeta


def _as_hwc(img: np.ndarray, index: int) -> np.ndarray:
    """One image as uint8 (H, W, C); (H, W) becomes (H, W, 1)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DataError(f"image {index} has dtype {img.dtype}, expected uint8 pixel values 0..255",
                        "store images as uint8 (N, H, W, C)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or min(img.shape) < 1:
        raise DataError(f"image {index} has shape {img.shape}, expected (H, W, C) or (H, W)",
                        "store images as uint8 NHWC (N, H, W, C), or (N, H, W) for grayscale")
    return img


def shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side ``size`` and the longer ``int(size · long / short)`` (torchvision)."""
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def resize_shorter_side(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio.

    Bilinear (Pillow, antialiased when shrinking), the long side is
    ``int(size * long / short)`` as in torchvision. Channels are resized one by one
    as 8-bit planes, so any channel count works.

    Args:
        img: uint8 (H, W, C).
        size: target length of the shorter side, pixels.

    Returns:
        uint8 (H', W', C).
    """
    from PIL import Image  # lazy: only needed when resizing

    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    new_h, new_w = shorter_side_size(h, w, size)
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c]))  # 2-D uint8 → mode "L"
                   .resize((new_w, new_h), bilinear))
        for c in range(img.shape[2])
    ]
    return np.stack(planes, axis=2)


def center_crop(img: np.ndarray, height: int, width: int, index: int = 0) -> np.ndarray:
    """Cut the central (height, width) window (torchvision's CenterCrop offsets).

    Args:
        img: (H, W, C) with H >= height and W >= width.

    Raises:
        DataError: the image is smaller than the crop.
    """
    h, w = img.shape[:2]
    if h < height or w < width:
        raise DataError(
            f"image {index} is {h}x{w} pixels, smaller than the model's input {height}x{width}",
            "supply images at least as large as the model input, or set `resize` in the model card",
        )
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return img[top:top + height, left:left + width]


def preprocess(images: np.ndarray | Sequence[np.ndarray], meta: ModelMeta) -> np.ndarray:
    """Turn uint8 images into the model's float input.

    Steps: if ``meta.resize`` is set, resize the shorter side to ``resize`` (bilinear),
    then centre-crop to (H, W) of ``meta.input_shape``; if ``resize`` is None, images must
    already be (H, W): larger and smaller ones are rejected with their size and the expected one. Then
    ``x = (pixel / 255 - mean[c]) / std[c]`` per channel, in float32.

    Args:
        images: uint8 NHWC (N, H, W, C), or (N, H, W) for grayscale; or a sequence of
            N uint8 (H, W, C) / (H, W) arrays of possibly different sizes.
        meta: the model card (input_shape (C, H, W), mean, std, resize).

    Returns:
        float32 NCHW (N, C, H, W).

    Raises:
        DataError: wrong dtype or rank, channel count different from the model's,
            an image smaller than the model input.
    """
    c, height, width = meta.input_shape
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise DataError(f"images have dtype {images.dtype}, expected uint8 pixel values 0..255",
                            "store images as uint8 (N, H, W, C)")
        if images.ndim == 3:
            images = images[:, :, :, None]
        if images.ndim != 4:
            raise DataError(f"images have shape {images.shape}, expected NHWC (N, H, W, C)",
                            "store images as uint8 NHWC, or (N, H, W) for grayscale")
    n = len(images)
    out = np.empty((n, c, height, width), np.float32)
    for i in range(n):
        img = _as_hwc(images[i], i)
        if img.shape[2] != c:
            raise DataError(
                f"image {i} has {img.shape[2]} channel(s) but the model expects {c}",
                "convert the images (e.g. grayscale ↔ RGB) to the model's channel count",
            )
        if meta.resize is not None:
            img = resize_shorter_side(img, int(meta.resize))
        elif img.shape[:2] != (height, width) and img.shape[0] >= height and img.shape[1] >= width:
            # without a resize step a larger image would be centre-cropped to a fraction of its
            # content (64×64 into 32×32 keeps the middle quarter and scores ~0): say so instead
            raise DataError(
                f"image {i} is {img.shape[0]}x{img.shape[1]} pixels but the model takes {height}x{width} "
                "and its model card has no resize step",
                f"store the images at {height}x{width}, or use a model card with `resize` "
                "(resize shorter side, then centre-crop)")
        if img.shape[:2] != (height, width):
            img = center_crop(img, height, width, i)
        out[i] = img.transpose(2, 0, 1)
    out /= np.float32(255.0)
    mean = np.asarray(meta.mean, np.float32).reshape(1, c, 1, 1)
    std = np.asarray(meta.std, np.float32).reshape(1, c, 1, 1)
    out -= mean
    out /= std
    return out
