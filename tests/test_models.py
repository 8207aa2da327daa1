"""The model zoo and its registry: names, defaults, shapes, parameter layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolchain.core.errors import ConfigError
from toolchain.core.meta import ModelMeta
from toolchain.graph.fx import fp_module
from toolchain.models import get_arch, list_archs, register_arch
from toolchain.models.cifar_resnet import ShortcutA
from toolchain.models.dynamic_batch import export_model

ZOO = ["mobilenet_v2", "resnet110", "resnet18", "resnet20", "resnet32", "resnet44", "resnet50",
       "resnet56", "tinynet"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
IMAGENET = ["mobilenet_v2", "resnet18", "resnet50"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_zoo():
    assert list_archs() == ZOO


def test_unknown_arch_names_the_known_ones():
    with pytest.raises(ConfigError) as e:
        get_arch("resnet-21")
    assert "resnet-21" in e.value.message
    assert all(name in e.value.message for name in ZOO)
    assert "did you mean" in (e.value.hint or "")
    with pytest.raises(ConfigError):
        get_arch("vgg16")


def test_arch_names_forgive_case_and_dashes():
    assert get_arch("ResNet-20").name == "resnet20"
    assert get_arch("mobilenetv2").name == "mobilenet_v2"


def test_register_twice_is_refused():
    with pytest.raises(ValueError):
        register_arch("tinynet", input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), num_classes=10)(
            lambda num_classes, in_channels: nn.Identity()
        )


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_defaults(name):
    spec = get_arch(name)
    assert spec.input_shape == (3, 32, 32)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.num_classes == 10 and spec.resize is None


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_defaults(name):
    spec = get_arch(name)
    assert spec.input_shape == (3, 224, 224) and spec.resize == 256 and spec.num_classes == 1000
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


def test_tinynet_defaults_and_size():
    spec = get_arch("tinynet")
    assert (spec.input_shape, spec.mean, spec.std, spec.num_classes) == ((1, 8, 8), (0.5,), (0.5,), 10)
    assert 1000 < n_params(spec.build()) < 10_000


def test_default_meta_overrides():
    meta = get_arch("resnet20").default_meta(num_classes=100, mean=None)
    assert isinstance(meta, ModelMeta)
    assert meta.num_classes == 100 and meta.arch == "resnet20" and meta.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name", ZOO)
def test_forward_shape(name):
    spec = get_arch(name)
    batch = 1 if spec.input_shape[1] >= 200 else 3
    model = spec.build(num_classes=7).eval()
    with torch.no_grad():
        y = model(torch.randn(batch, *spec.input_shape))
    assert y.shape == (batch, 7) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["tinynet", "resnet20"])
def test_in_channels(name):
    model = get_arch(name).build(in_channels=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, 16, 16)).shape == (2, get_arch(name).num_classes)


@pytest.mark.parametrize("depth,params", [(20, 269_722), (32, 464_154), (44, 658_586),
                                          (56, 853_018), (110, 1_727_962)])
def test_cifar_resnet_param_counts(depth, params):
    # 269,722 for ResNet-20 is the akamaster checkpoint's count (shared/README.md)
    assert n_params(get_arch(f"resnet{depth}").build()) == params


def test_imagenet_param_counts():
    # torchvision's published counts
    assert n_params(get_arch("resnet18").build()) == 11_689_512
    assert n_params(get_arch("resnet50").build()) == 25_557_032
    assert n_params(get_arch("mobilenet_v2").build()) == 3_504_872


def test_resnet20_layout_is_akamasters():
    keys = list(get_arch("resnet20").build().state_dict())
    assert keys[0] == "conv1.weight" and keys[-1] == "linear.bias"
    assert "layer3.2.bn2.running_var" in keys
    # option-A shortcuts have no parameters
    assert not any("shortcut" in k or "downsample" in k for k in keys)


def test_torchvision_layouts():
    r50 = get_arch("resnet50").build().state_dict()
    assert {"layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "fc.weight"} <= set(r50)
    r18 = get_arch("resnet18").build().state_dict()
    assert "layer2.0.downsample.1.running_mean" in r18 and "layer1.0.downsample.0.weight" not in r18
    mnv2 = get_arch("mobilenet_v2").build().state_dict()
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.18.1.running_var",
            "classifier.1.weight"} <= set(mnv2)
    assert len(mnv2) == 314  # as in torchvision's mobilenet_v2-b0353104.pth


def test_option_a_shortcut():
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_mobilenet_v2_uses_relu6():
    model = get_arch("mobilenet_v2").build()
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("name", ["tinynet", "resnet20"])
def test_zoo_exports_with_dynamic_batch(name):
    spec = get_arch(name)
    model = spec.build().eval()
    program = export_model(model, spec.input_shape)
    module = fp_module(program)
    for batch in (1, 5):
        x = torch.randn(batch, *spec.input_shape)
        with torch.no_grad():
            torch.testing.assert_close(module(x), model(x), rtol=1e-4, atol=1e-5)
