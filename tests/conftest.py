"""Shared fixtures: where the real models and data live, and a skip when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: real pretrained models and labelled eval data beside the project (see ../shared/README.md)
SHARED = Path(os.environ.get("ZQTOOL_SHARED", ROOT.parent / "shared")).resolve()

RESNET20 = SHARED / "models" / "resnet20-12fca82f.th"
RESNET56 = SHARED / "models" / "resnet56-4bfd9763.th"
MOBILENET_V2 = SHARED / "models" / "mobilenet_v2-b0353104.pth"
CIFAR10_NPZ = SHARED / "data" / "cifar10_test_first1017.npz"
IMAGENET_DIR = SHARED / "data" / "imagenet_val1300"


def need(*paths: Path):
    """Skip the calling test with a clear reason unless every path exists."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        pytest.skip(
            f"needs the real models/data in ../shared (missing {missing[0]}); "
            "set ZQTOOL_SHARED to its location"
        )


@pytest.fixture
def shared_resnet20():
    need(RESNET20)
    return RESNET20


@pytest.fixture
def shared_cifar10():
    need(CIFAR10_NPZ)
    return CIFAR10_NPZ


@pytest.fixture
def shared_mobilenet_v2():
    need(MOBILENET_V2)
    return MOBILENET_V2


@pytest.fixture
def shared_imagenet():
    need(IMAGENET_DIR / "labels.csv")
    return IMAGENET_DIR
