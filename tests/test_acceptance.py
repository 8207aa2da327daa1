"""Issue-2 acceptance lines at small scale on the real pretrained models in ../shared.

Few images, few synthesis steps: these check that each line's pipeline works and keeps
its structural promises (every Conv integer, torch ↔ ORT agreement, accuracy near FP32 at
8 bits). The full-scale numbers are produced by the commands in README.md.
"""

from __future__ import annotations

import pytest

from toolchain.artifacts import Store
from toolchain.pipeline import run
from toolchain.quant.scheme import QuantScheme

from conftest import CIFAR10_NPZ, IMAGENET_DIR, MOBILENET_V2, RESNET20, need

SMALL_BNSTAT = {"iterations": "4", "num_images": "32", "batch_size": "32"}


def run_small(tmp_path, model, data, arch, method, bits, limit, overrides=None):
    return run(model, data, load_options={"arch": arch}, method=method, scheme=QuantScheme.from_bits(bits),
               overrides=overrides, limit=limit, latency_runs=2, parity_images=32,
               store=Store(tmp_path / "runs"))


def assert_all_convs_integer(report):
    ops = report.verify.integer_ops
    assert ops.conv_total > 0
    assert ops.conv_integer == ops.conv_total, ops.float_nodes


def test_resnet20_bnstat_w8_is_near_fp32_and_fully_integer(tmp_path):
    need(RESNET20, CIFAR10_NPZ)
    r = run_small(tmp_path, RESNET20, CIFAR10_NPZ, "resnet20", "bnstat", 8, 200, SMALL_BNSTAT)
    v = r.verify
    assert v.n_images == 200
    assert v.fp32.top1 - v.quantized.top1 <= 2.0
    assert v.agreement_top1 >= 97.0
    assert_all_convs_integer(r)
    assert v.integer_ops.conv_total == 20  # 19 convs + the linear layer
    assert r.parity.off.agreement_top1 >= 99.0


@pytest.mark.parametrize("method,bits", [("bnstat", 4), ("minmax", 8), ("minmax", 4)])
def test_resnet20_baselines_run_through_ort(tmp_path, method, bits):
    need(RESNET20, CIFAR10_NPZ)
    r = run_small(tmp_path, RESNET20, CIFAR10_NPZ, "resnet20", method, bits, 100,
                  SMALL_BNSTAT if method == "bnstat" else None)
    assert r.verify.quantized.top1 > 40.0  # far above chance (10%)
    assert_all_convs_integer(r)
    assert r.parity.on.agreement_top1 >= 90.0


def test_mobilenet_v2_w8_is_fully_integer_and_close_to_fp32(tmp_path):
    need(MOBILENET_V2, IMAGENET_DIR / "labels.csv")
    r = run_small(tmp_path, MOBILENET_V2, IMAGENET_DIR, "mobilenet_v2", "bnstat", 8, 48,
                  {"iterations": "2", "num_images": "8", "batch_size": "8"})
    assert r.verify.n_images == 48
    assert_all_convs_integer(r)
    assert r.verify.integer_ops.conv_total == 53  # 52 convs + the classifier
    assert r.verify.agreement_top1 >= 80.0
