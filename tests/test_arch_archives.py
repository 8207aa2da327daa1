"""The torchvision architecture archives in ``../shared/models/arch/`` (random weights; see its README).

Default run: each archive loads (fixed-batch ones made dynamic), the rewrite knows every op
(no unknown ones), and minmax's BN-moment propagation sets finite ranges. ``-m slow``: each
goes through W8 and W4 export, every Conv/Gemm runs as an integer kernel in onnxruntime and the
deployed model agrees with the integer-exact simulation. Skipped without ``../shared``.
"""

from __future__ import annotations

import platform

import pytest
import torch

from conftest import SHARED, need

ARCH = SHARED / "models" / "arch"
NAMES = ["densenet_slim", "efficientnet_b0", "mobilenet_v3_small", "seg_lraspp_mobilenet_v3_large",
         "shufflenet_v2_x0_5"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        need(ARCH / f"{name}.pt2")
        if name not in cache:
            from toolchain.models.loader import load_model
            cache[name] = load_model(ARCH / f"{name}.pt2", mean=MEAN, std=STD)
        return cache[name]
    return get


@pytest.mark.parametrize("name", NAMES)
def test_archive_loads_and_every_op_has_a_role(loaded, name):
    from toolchain.quant.bn_ranges import set_ranges_from_bn
    from toolchain.quant.rewrite import quantize_graph
    from toolchain.quant.scheme import QuantScheme
    lm = loaded(name)
    assert lm.meta.task == ("segmentation" if name.startswith("seg_") else "classification")
    if name in ("mobilenet_v3_small", "shufflenet_v2_x0_5"):  # exported with a fixed batch of 1
        assert lm.meta.extra["batch_made_dynamic"] and lm.meta.extra["exported_batch"] == 1
    qm = quantize_graph(lm.program, QuantScheme.from_bits(8))
    assert qm.unknown_ops == {}
    ranges = set_ranges_from_bn(qm, MEAN, STD)
    assert ranges and all(lo < hi for lo, hi in ranges.values())


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", NAMES)
def test_archive_exports_integer_and_matches_exact_simulation(loaded, tmp_path, name, bits):
    from toolchain.export import check_parity, write_qdq
    from toolchain.quant.bn_ranges import set_ranges_from_bn
    from toolchain.quant.rewrite import quantize_graph
    from toolchain.quant.scheme import QuantScheme
    from toolchain.verify.integer_ops import inspect_integer_ops
    lm = loaded(name)
    qm = quantize_graph(lm.program, QuantScheme.from_bits(bits))
    set_ranges_from_bn(qm, MEAN, STD)
    path = tmp_path / f"{name}.qdq.onnx"
    write_qdq(qm, lm.meta, path)
    ops = inspect_integer_ops(path)
    assert ops["conv_integer"] >= ops["conv_total"] > 0, ops
    torch.manual_seed(0)
    on = check_parity(qm, path, torch.randn(4, *lm.meta.input_shape)).to_dict()["on"]
    assert on["agreement_top1"] >= 99.0, on
    if IS_X86:
        assert on["max_diff_lsb"] <= 1.0, on
