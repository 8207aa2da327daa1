"""Stage 1 loader: every accepted file format, every refused one, and the real checkpoints."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import RESNET56, need
from torch import nn

from toolchain.core.errors import (
    ConfigError,
    InputFileError,
    ModelMismatchError,
    UnsafeModelError,
    UnsupportedModelError,
    ZqError,
)
from toolchain.graph.fx import fp_module
from toolchain.graph.ops import has_batchnorm
from toolchain.models import get_arch
from toolchain.models.dynamic_batch import export_model
from toolchain.models.loader import LoadedModel, load_model, require_batchnorm
from toolchain.models.tiny import TinyNet

SHAPE = (1, 8, 8)


class NoBN(nn.Module):
    """conv + ReLU + pool + linear: a model without BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1))


class FixedBatch(NoBN):
    """Hard-codes the batch size in a view (as a channel shuffle exported at batch 1 does)."""

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).view(1, 4))


class MixesBatch(NoBN):
    """Mixes the images of a batch: at a fixed batch of 1 it is not the same function at batch N."""

    def forward(self, x):
        y = self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))
        return y - 0.5 * y.mean(0, keepdim=True)


class DataDependent(NoBN):
    """Python control flow on tensor values: torch.export cannot trace it."""

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return super().forward(x)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyNet(num_classes=10, in_channels=1)
    # non-trivial BN statistics, so a wrong load would show in the outputs
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def same_outputs(loaded: LoadedModel, model: nn.Module, shape=SHAPE):
    module = fp_module(loaded.program)
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            torch.testing.assert_close(module(x), model(x), rtol=1e-4, atol=1e-5)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_dynamic(model, path, shape=SHAPE):
    ep = torch.export.export(model.eval(), (torch.randn(2, *shape),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, path)
    return path


# ----------------------------------------------------------------------------- state_dict


def test_state_dict(tmp_path, tiny):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    loaded = load_model(path, arch="tinynet")
    assert isinstance(loaded.program, torch.export.ExportedProgram)
    same_outputs(loaded, tiny)
    m = loaded.meta
    assert (m.input_shape, m.mean, m.std, m.num_classes, m.resize) == (SHAPE, (0.5,), (0.5,), 10, None)
    assert (m.arch, m.source_format, m.source_sha256) == ("tinynet", "state_dict", sha256(path))
    assert has_batchnorm(loaded.program)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "model_state_dict"])
def test_wrapped_state_dict_with_module_prefix(tmp_path, tiny, wrap):
    path = tmp_path / "ckpt.th"
    sd = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    torch.save({wrap: sd, "epoch": 3, "best_prec1": 91.0}, path)
    same_outputs(load_model(path, arch="tinynet"), tiny)


def test_state_dict_overrides_and_inferred_classes(tmp_path):
    model = TinyNet(num_classes=4, in_channels=3).eval()
    path = tmp_path / "four.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="tinynet", input_shape=(3, 12, 12), mean=(0.1, 0.2, 0.3), std=(0.5,))
    m = loaded.meta
    assert m.num_classes == 4  # from fc.weight, not the arch default 10
    assert (m.input_shape, m.mean, m.std) == ((3, 12, 12), (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    same_outputs(loaded, model, (3, 12, 12))


def test_state_dict_needs_arch(tmp_path, tiny):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(ConfigError, match="--arch") as e:
        load_model(path)
    assert "resnet20" in e.value.hint and "tinynet" in e.value.hint


def test_unknown_arch(tmp_path, tiny):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(ConfigError, match="unknown architecture"):
        load_model(path, arch="vgg16")


def test_mismatch_message_lists_keys(tmp_path, tiny):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(ModelMismatchError) as e:
        load_model(path, arch="resnet20", input_shape=(1, 32, 32), mean=(0.5,), std=(0.5,))
    msg = e.value.message
    assert msg.startswith("state_dict does not fit --arch resnet20")
    assert "missing" in msg and "layer1.0.conv1.weight (16,16,3,3)" in msg
    assert "unexpected" in msg and "block.conv1.weight (8,8,3,3)" in msg
    assert "mis-shaped" in msg and "conv1.weight file (8,1,3,3) vs model (16,1,3,3)" in msg
    assert "more" in msg  # long lists are cut, with a count
    assert "\n" not in msg
    assert "tinynet" in e.value.hint  # the keys fit another zoo arch


def test_mismatch_on_num_classes(tmp_path, tiny):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(ModelMismatchError, match=r"fc.weight file \(10,16\) vs model \(3,16\)"):
        load_model(path, arch="tinynet", num_classes=3)


def test_dict_without_tensors(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save({"epoch": 3, "note": "nothing here"}, path)
    with pytest.raises(InputFileError, match="without weight tensors"):
        load_model(path, arch="tinynet")


# ----------------------------------------------------------------------------- .pt2


def test_pt2_dynamic(tmp_path, tiny):
    path = export_dynamic(tiny, tmp_path / "tiny.pt2")
    loaded = load_model(path)
    same_outputs(loaded, tiny)
    m = loaded.meta
    assert (m.input_shape, m.num_classes, m.arch, m.source_format) == (SHAPE, 10, None, "pt2")
    assert (m.mean, m.std) == ((0.0,), (1.0,))
    assert m.extra == {"normalization_given": False}
    assert m.source_sha256 == sha256(path)


def test_pt2_with_normalisation_and_any_suffix(tmp_path, tiny):
    path = export_dynamic(tiny, tmp_path / "model.bin")  # detected by content
    loaded = load_model(path, mean=(0.5,), std=(0.25,), num_classes=10)
    assert (loaded.meta.mean, loaded.meta.std, loaded.meta.extra) == ((0.5,), (0.25,), {})
    with_arch = load_model(path, arch="tinynet").meta  # the arch only supplies the defaults
    assert (with_arch.arch, with_arch.mean, with_arch.std, with_arch.extra) == ("tinynet", (0.5,), (0.5,), {})
    with pytest.raises(ConfigError, match="outputs 10 logits"):
        load_model(path, num_classes=3)
    with pytest.raises(ConfigError, match="does not fit the program's input"):
        load_model(path, input_shape=(3, 8, 8), mean=(0.5,), std=(0.5,))


def test_pt2_static_batch_is_made_dynamic(tmp_path, tiny):
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(tiny, (torch.randn(1, *SHAPE),)), path)
    loaded = load_model(path)
    assert loaded.meta.extra["batch_made_dynamic"] is True
    same_outputs(loaded, tiny)


def test_pt2_static_batch_literal_in_a_view_is_freed(tmp_path):
    torch.manual_seed(0)
    model = FixedBatch().eval()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, *SHAPE),)), path)
    loaded = load_model(path)
    assert loaded.meta.extra["batch_made_dynamic"] and loaded.meta.extra["exported_batch"] == 1
    assert loaded.meta.extra["batch_literals_freed"] == 1
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        want = torch.cat([model(x[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(loaded.program.module()(x), want)


def test_pt2_static_batch_that_cannot_be_freed(tmp_path):
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(MixesBatch().eval(), (torch.randn(1, *SHAPE),)), path)
    with pytest.raises(UnsupportedModelError, match="batch dimension is fixed to 1") as e:
        load_model(path)
    assert "dynamic_shapes" in e.value.hint


def test_pt2_in_training_mode(tmp_path, tiny):
    path = tmp_path / "train.pt2"
    ep = torch.export.export(tiny.train(), (torch.randn(2, *SHAPE),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, path)
    with pytest.raises(UnsupportedModelError, match="training mode"):
        load_model(path)


def test_corrupt_pt2(tmp_path, tiny):
    path = export_dynamic(tiny, tmp_path / "tiny.pt2")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated"):
        load_model(cut)


# ----------------------------------------------------------------------------- pickle


def test_pickle_refused_without_trust(tmp_path, tiny):
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    with pytest.raises(UnsafeModelError) as e:
        load_model(path, arch="tinynet")
    assert "toolchain.models.tiny.TinyNet" in e.value.message
    assert "--trust-pickle" in e.value.hint and "state_dict" in e.value.hint and ".pt2" in e.value.hint


def test_pickle_with_trust(tmp_path, tiny):
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    loaded = load_model(path, trust_pickle=True, input_shape=SHAPE)
    same_outputs(loaded, tiny)
    m = loaded.meta
    assert (m.source_format, m.num_classes, m.arch) == ("pickle", 10, None)
    assert m.extra == {"normalization_given": False}
    with_arch = load_model(path, trust_pickle=True, arch="tinynet").meta
    assert (with_arch.mean, with_arch.arch, with_arch.extra) == ((0.5,), "tinynet", {})
    with pytest.raises(ConfigError, match="input shape"):
        load_model(path, trust_pickle=True)


def test_pickle_wrapped_in_dict(tmp_path, tiny):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny, "epoch": 1}, path)
    with pytest.raises(UnsafeModelError):
        load_model(path)
    same_outputs(load_model(path, trust_pickle=True, arch="tinynet"), tiny)


def test_pickle_of_a_class_that_is_gone(tmp_path):
    mod = types.ModuleType("zq_vanished")
    cls = type("Vanished", (NoBN,), {"__module__": "zq_vanished"})
    mod.Vanished = cls
    sys.modules["zq_vanished"] = mod
    try:
        path = tmp_path / "gone.pt"
        torch.save(cls(), path)
    finally:
        del sys.modules["zq_vanished"]
    with pytest.raises(InputFileError, match="cannot unpickle") as e:
        load_model(path, trust_pickle=True, input_shape=SHAPE)
    assert "importable" in e.value.hint


def test_untraceable_model(tmp_path):
    with pytest.raises(UnsupportedModelError, match="torch.export could not trace"):
        export_model(DataDependent(), SHAPE)
    path = tmp_path / "dd.pt"
    torch.save(DataDependent(), path)
    with pytest.raises(UnsupportedModelError) as e:
        load_model(path, trust_pickle=True, input_shape=SHAPE)
    assert "\n" not in e.value.message


# ----------------------------------------------------------------------------- refused files


def test_torchscript(tmp_path, tiny):
    path = tmp_path / "scripted.pt"
    torch.jit.trace(tiny, torch.randn(1, *SHAPE)).save(str(path))
    with pytest.raises(InputFileError, match="TorchScript is not supported") as e:
        load_model(path, arch="tinynet")
    assert "torch.jit.load" in e.value.hint and "state_dict" in e.value.hint


def test_truncated_state_dict(tmp_path, tiny):
    path = tmp_path / "cut.pth"
    torch.save(tiny.state_dict(), path)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(InputFileError, match="truncated"):
        load_model(path, arch="tinynet")


def test_truncated_legacy_pickle(tmp_path, tiny):
    path = tmp_path / "legacy.pth"
    torch.save(tiny.state_dict(), path, _use_new_zipfile_serialization=False)
    assert load_model(path, arch="tinynet").meta.source_format == "state_dict"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputFileError):
        load_model(path, arch="tinynet")


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, b"hello, world\n", b"\x80\x02}q\x00."[:5]])
def test_garbage(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as e:
        load_model(path, arch="tinynet")
    assert "\n" not in e.value.message


def test_empty_missing_directory(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        load_model(empty, arch="tinynet")
    with pytest.raises(InputFileError, match="not found"):
        load_model(tmp_path / "nope.pt", arch="tinynet")
    with pytest.raises(InputFileError, match="directory"):
        load_model(tmp_path, arch="tinynet")


# ----------------------------------------------------------------------------- program helpers


def test_fp_module(tiny):
    program = export_model(tiny, SHAPE)
    module = fp_module(program)
    assert not any(n.op == "call_module" for n in module.graph.nodes)
    assert not hasattr(module, "_guards_fn")
    assert module.training is False and module.eval() is module
    with pytest.raises(NotImplementedError):
        module.train()
    for batch in (1, 5):
        assert module(torch.randn(batch, *SHAPE)).shape == (batch, 10)
    with pytest.raises(RuntimeError):
        module(torch.randn(2, 3, 8, 8))  # wrong channels: torch's input check still applies


def test_batchnorm_detection(tiny):
    assert has_batchnorm(export_model(tiny, SHAPE))
    require_batchnorm(export_model(tiny, SHAPE), "bnstat")
    no_bn = export_model(NoBN(), SHAPE)
    assert not has_batchnorm(no_bn)
    with pytest.raises(UnsupportedModelError, match="method bnstat needs BatchNorm statistics") as e:
        require_batchnorm(no_bn, "bnstat")
    assert "minmax" in str(e.value)


def test_errors_are_zq_errors():
    # the CLI relies on this: everything above is caught as ZqError
    for cls in (InputFileError, ModelMismatchError, UnsafeModelError, UnsupportedModelError, ConfigError):
        assert issubclass(cls, ZqError)


# ----------------------------------------------------------------------------- real checkpoints


def cifar_accuracy(module, npz: Path, meta) -> float:
    data = np.load(npz)
    x = torch.from_numpy(data["images"]).float().div(255).permute(0, 3, 1, 2)
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    with torch.no_grad():
        pred = torch.cat([module(x[i:i + 512]) for i in range(0, len(x), 512)]).argmax(1)
    return float((pred.numpy() == data["labels"]).mean())


def test_real_resnet20(shared_resnet20, shared_cifar10):
    # the akamaster file: {"state_dict", "best_prec1"}, "module." keys, tensors saved from CUDA
    loaded = load_model(shared_resnet20, arch="resnet20")
    m = loaded.meta
    assert m.source_sha256.startswith("12fca82f") and m.source_format == "state_dict"
    assert (m.input_shape, m.num_classes) == ((3, 32, 32), 10)
    acc = cifar_accuracy(fp_module(loaded.program), shared_cifar10, m)
    print(f"resnet20 FP32 top-1 on the first 1,017 CIFAR-10 test images: {acc:.2%}")
    assert acc >= 0.91  # measured: 91.64% (shared/README.md)


def test_real_resnet20_strict_keys(shared_resnet20):
    ckpt = torch.load(shared_resnet20, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    get_arch("resnet20").build().load_state_dict(sd, strict=True)


def test_real_resnet56_under_the_wrong_arch():
    need(RESNET56)
    with pytest.raises(ModelMismatchError, match="unexpected") as e:
        load_model(RESNET56, arch="resnet20")
    assert "resnet56" in e.value.hint


def test_real_mobilenet_v2(shared_mobilenet_v2):
    # the loader checks every key and shape, then load_state_dict(strict=True)
    loaded = load_model(shared_mobilenet_v2, arch="mobilenet_v2")
    m = loaded.meta
    assert m.source_sha256.startswith("b0353104")
    assert (m.input_shape, m.num_classes, m.resize) == ((3, 224, 224), 1000, 256)
    with torch.no_grad():
        logits = fp_module(loaded.program)(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
