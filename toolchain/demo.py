"""The embedded default for ``zqtool demo``: a model trained here, on data a package ships.

scikit-learn ships the UCI optical digits (1,797 8×8 grayscale images, 10 classes) inside
the package, so the demo needs no download and no file: it trains ``tinynet`` on 1,297 of
them (about ten seconds on a CPU), saves the state_dict and the 500 held-out digits as an
``.npz``, and the CLI then runs the real pipeline on those two files. Quantization never
sees the digits: only the trained weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.errors import ConfigError

N_TEST = 500


def digits_split(seed: int = 0):
    """(train images, train labels, test images, test labels): uint8 (N, 8, 8, 1), int64 (N,)."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise ConfigError("the demo needs scikit-learn (it ships the digits data set)",
                          "pip install scikit-learn  (or: pip install -e '.[demo]')") from None
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    test, train = order[:N_TEST], order[N_TEST:]
    return images[train], labels[train], images[test], labels[test]


def train_tinynet(images: np.ndarray, labels: np.ndarray, epochs: int = 15, seed: int = 0):
    """Train ``tinynet`` (1×8×8 input, mean/std 0.5) with Adam; returns the eval-mode model."""
    import torch
    import torch.nn.functional as F

    from .models.registry import get_arch

    torch.manual_seed(seed)
    model = get_arch("tinynet").builder(10, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            xb = x[idx]
            xb = torch.roll(xb, shifts=tuple(torch.randint(-1, 2, (2,), generator=g).tolist()), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def prepare_demo(out: Path, console=None) -> tuple[Path, Path]:
    """Train (once) and write ``tinynet-digits.pt`` + ``digits_test.npz`` under ``out``; return both paths."""
    import torch

    out = Path(out)
    model_path, data_path = out / "tinynet-digits.pt", out / "digits_test.npz"
    if model_path.is_file() and data_path.is_file():
        return model_path, data_path
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = digits_split()
    if console:
        console.print(f"training tinynet on {len(ytr)} scikit-learn digits (held out: {len(yte)}) …")
    model = train_tinynet(xtr, ytr)
    tmp_model, tmp_data = model_path.with_suffix(".tmp"), out / "digits_test.tmp.npz"
    torch.save(model.state_dict(), tmp_model)
    np.savez(tmp_data, images=xte, labels=yte)
    tmp_model.replace(model_path)
    tmp_data.replace(data_path)
    return model_path, data_path
