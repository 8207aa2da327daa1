"""Modern mobile architecture families on tiny graphs built here: rewrite, export, onnxruntime.

Each block stands for a family's ops (torchvision's definitions use the same ones):
``MobileV3`` hardswish/hardsigmoid, squeeze-excitation gate (a product of two tensors), in-place
ops, dropout; ``Efficient`` SiLU, sigmoid gate, GELU; ``Shuffle`` chunk, channel shuffle
(view → transpose → view, with the batch as a literal when exported at batch 1), concat,
mean over H×W; ``Dense`` pre-activation BN → ReLU → Conv after a concat, avg-pool transition;
``Seg`` a per-pixel head with nearest and bilinear upsampling (N×K×H×W output).

For each: every Conv runs as an integer kernel in onnxruntime's optimized graph, and the
exported model is bit-identical to the integer-exact simulation (x86) — the torch-vs-ORT
agreement on the deployed model is exact, not statistical.
"""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import calibrate_minmax, random_bn
from toolchain.core.errors import UnsupportedModelError
from toolchain.export import check_parity, write_qdq
from toolchain.core.meta import ModelMeta
from toolchain.quant.bn_ranges import set_ranges_from_bn
from toolchain.quant.rewrite import quantize_graph
from toolchain.quant.scheme import QuantScheme
from toolchain.verify.integer_ops import inspect_integer_ops

SHAPE = (3, 16, 16)
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")


def cbn(cin, cout, k=3, stride=1, groups=1, dilation=1):
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class SE(nn.Module):
    def __init__(self, c, gate):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1), gate

    def forward(self, x):
        s = self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class MobileV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.dw, self.se, self.pw = cbn(3, 8, stride=2), cbn(8, 8, groups=8), SE(8, nn.Hardsigmoid()), cbn(8, 8, 1)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.Hardswish(inplace=True), nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        x = F.hardswish(self.stem(x), inplace=True)
        y = self.pw(self.se(F.hardswish(self.dw(x))))
        y += x  # in place, as torchvision's blocks do
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Efficient(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.dw, self.se, self.pw = cbn(3, 8, stride=2), cbn(8, 8, groups=8, dilation=2), SE(8, nn.Sigmoid()), cbn(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.silu(self.stem(x), inplace=True)
        y = self.pw(self.se(F.silu(self.dw(x))))
        return self.fc(F.gelu(F.adaptive_avg_pool2d(x + y, 1).flatten(1)))


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.branch, self.grouped = cbn(3, 8, stride=2), cbn(4, 4), cbn(8, 8, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, F.relu(self.branch(b))), dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = F.relu(self.grouped(x))
        return self.fc(x.mean([2, 3]))


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbn(3, 8)
        self.norm1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.norm3, self.trans = nn.BatchNorm2d(12), nn.Conv2d(12, 8, 1, bias=False)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        new = self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))
        x = torch.cat([x, new], 1)
        x = F.avg_pool2d(self.trans(F.relu(self.norm3(x))), 2)
        return self.fc(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1))


class Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.down, self.mid, self.cls = cbn(3, 8, stride=2), cbn(8, 8), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = F.relu(self.down(x))
        z = F.interpolate(F.relu(self.mid(F.max_pool2d(y, 2))), scale_factor=2, mode="nearest")
        return F.interpolate(self.cls(y + z), size=x.shape[-2:], mode="bilinear", align_corners=False)


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.fc = cbn(3, 8), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.abs(self.stem(x)), 1).flatten(1))


FAMILIES = {"mobilenet_v3": MobileV3, "efficientnet": Efficient, "shufflenet": Shuffle, "densenet": Dense,
            "segmentation": Seg}


def _model(cls) -> nn.Module:
    torch.manual_seed(0)
    return random_bn(cls(), mean=0.3, var=(0.5, 1.5))


def _program(m: nn.Module, fixed_batch: bool = False):
    if fixed_batch:
        return torch.export.export(m, (torch.randn(1, *SHAPE),))
    return torch.export.export(m, (torch.randn(2, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("batch")},))


def _meta(task="classification", k=10) -> ModelMeta:
    return ModelMeta(input_shape=SHAPE, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=k, task=task)


_calibrate = calibrate_minmax


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_integer_and_matches_exact_simulation(tmp_path, family, bits):
    model = _model(FAMILIES[family])
    qm = quantize_graph(_program(model), QuantScheme.from_bits(bits))
    assert qm.unknown_ops == {}
    torch.manual_seed(1)
    _calibrate(qm, torch.randn(32, *SHAPE))
    meta = _meta("segmentation", 5) if family == "segmentation" else _meta()
    path = tmp_path / f"{family}.qdq.onnx"
    write_qdq(qm, meta, path)
    ops = inspect_integer_ops(path)
    assert ops["conv_total"] > 0 and ops["conv_integer"] >= ops["conv_total"], ops  # every Conv/Gemm integer
    torch.manual_seed(2)
    res = check_parity(qm, path, torch.randn(16, *SHAPE)).to_dict()
    on = res["on"]
    if IS_X86:
        assert on["identical"] == 100.0 and on["max_diff_lsb"] == 0.0, on
    else:  # ARM64 requantizes QLinearAdd / GlobalAveragePool in fixed point: a code may move by one
        assert on["max_diff_lsb"] <= 2.0 and on["agreement_top1"] >= 95.0, on


def test_family_specific_integer_kernels(tmp_path):
    """The squeeze-excitation product becomes QLinearMul, the sigmoid gate QLinearSigmoid."""
    model = _model(Efficient)
    qm = quantize_graph(_program(model), QuantScheme.from_bits(8))
    _calibrate(qm, torch.randn(32, *SHAPE))
    path = tmp_path / "eff.qdq.onnx"
    write_qdq(qm, _meta(), path)
    counts = inspect_integer_ops(path)["optimized_op_counts"]
    assert counts.get("QLinearMul", 0) >= 1 and counts.get("QLinearSigmoid", 0) >= 1, counts
    assert qm.float_ops.get("silu") == 2 and qm.float_ops.get("gelu") == 1


def test_segmentation_output_is_per_pixel(tmp_path):
    model = _model(Seg)
    qm = quantize_graph(_program(model), QuantScheme.from_bits(8))
    _calibrate(qm, torch.randn(8, *SHAPE))
    with torch.no_grad():
        out = qm(torch.randn(3, *SHAPE))
    assert out.shape == (3, 5, *SHAPE[1:])


def test_channel_shuffle_exported_at_batch_1_is_freed(tmp_path):
    from toolchain.models.loader import load_model
    model = _model(Shuffle)
    path = tmp_path / "shuffle.pt2"
    torch.export.save(_program(model, fixed_batch=True), path)
    loaded = load_model(path, input_shape=SHAPE)
    assert loaded.meta.extra["exported_batch"] == 1 and loaded.meta.extra["batch_literals_freed"] == 2
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_unknown_op_runs_in_float_with_a_count_and_strict_refuses(tmp_path):
    program = _program(_model(Unknown))
    qm = quantize_graph(program, QuantScheme.from_bits(8))
    assert qm.unknown_ops == {"abs": 1}
    _calibrate(qm, torch.randn(8, *SHAPE))
    write_qdq(qm, _meta(), tmp_path / "u.qdq.onnx")  # exported: Abs between DQ and Q
    with pytest.raises(UnsupportedModelError, match=r"--strict: .*abs ×1"):
        quantize_graph(program, QuantScheme.from_bits(8), strict=True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_minmax_ranges_propagate_through_every_family(family):
    qm = quantize_graph(_program(_model(FAMILIES[family])), QuantScheme.from_bits(8))
    ranges = set_ranges_from_bn(qm, (0.5,) * 3, (0.25,) * 3)
    assert ranges and all(lo < hi for lo, hi in ranges.values())


class NoBatchNorm(nn.Module):
    """SqueezeNet-like: convolutions and ReLUs, no BatchNorm."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 10, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = torch.cat([F.relu(self.c2(x)), x], 1)[:, :8]
        return F.adaptive_avg_pool2d(self.c3(x), 1).flatten(1)


def test_bn_free_model_refused_by_bn_methods_naming_those_that_apply(tmp_path):
    from typer.testing import CliRunner
    from toolchain.cli import app
    path = tmp_path / "nobn.pt2"
    torch.manual_seed(0)
    torch.export.save(_program(NoBatchNorm().eval()), path)
    runner = CliRunner()
    out = tmp_path / "runs"
    res = runner.invoke(app, ["quantize", str(path), "--method", "bnstat", "--out", str(out)])
    assert res.exit_code != 0
    assert "needs BatchNorm statistics" in res.output and "--method minmax" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["quantize", str(path), "--method", "minmax", "--out", str(out)])
    assert res.exit_code == 0, res.output
    listing = runner.invoke(app, ["list", "methods"]).output
    assert [ln.split()[1] for ln in listing.splitlines() if ln.startswith("  bnstat")] == ["[BN]"]


def test_segmentation_model_refused_by_methods_that_train_on_class_logits(tmp_path):
    from typer.testing import CliRunner
    from toolchain.cli import app
    path = tmp_path / "seg.pt2"
    torch.export.save(_program(_model(Seg)), path)
    res = CliRunner().invoke(app, ["quantize", str(path), "--method", "zaq", "--out", str(tmp_path / "runs")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "trains on class logits" in res.output and "--method bnstat" in res.output
