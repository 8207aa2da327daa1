"""ImageNet ResNet-18 / ResNet-50 in torchvision's parameter layout.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385). The state_dict keys (``conv1, bn1, layer1..4.{i}.{conv,bn}{1,2,3},
layer{k}.0.downsample.{0,1}, fc``) match torchvision's ``resnet18`` / ``resnet50``
so their published checkpoints load with ``strict=True``; the stride of a
bottleneck sits on its 3×3 conv (torchvision's "ResNet V1.5").

:class:`BasicBlock` is also the residual block of the CIFAR ResNets
(:mod:`.cifar_resnet`) and of :mod:`.tiny`, with a different shortcut module.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_arch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution, no bias (a BatchNorm follows)."""
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN, a shortcut, ReLU after the add (He et al. 2016, Fig. 2).

    Shapes: (N, inplanes, H, W) float32 → (N, planes, H/stride, W/stride).

    Args:
        inplanes, planes: input and output channels.
        stride: stride of the first conv.
        downsample: the shortcut for a block that changes shape (torchvision:
            1×1 conv + BN; CIFAR option A: subsample and zero-pad); None = identity.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, each with BN; ReLU after the add.

    Shapes: (N, inplanes, H, W) float32 → (N, 4·planes, H/stride, W/stride).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


def projection_shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    """torchvision's shortcut for a shape-changing block: 1×1 conv (strided) + BN."""
    return nn.Sequential(conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))


def make_stage(
    block: Block,
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int,
    shortcut: Callable[[int, int, int], nn.Module] = projection_shortcut,
) -> nn.Sequential:
    """``blocks`` residual blocks; the first one strides and gets ``shortcut`` if the shape changes.

    Returns an ``nn.Sequential`` whose output has ``planes * block.expansion`` channels.
    """
    outplanes = planes * block.expansion
    down = shortcut(inplanes, outplanes, stride) if stride != 1 or inplanes != outplanes else None
    layers = [block(inplanes, planes, stride, down)]
    layers += [block(outplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0, as torchvision does."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """ImageNet ResNet: 7×7/2 stem, 3×3/2 max-pool, four stages, global pool, ``fc``.

    Shapes: (N, in_channels, H, W) float32 (224×224 by default) → (N, num_classes) logits.

    Args:
        block: :class:`BasicBlock` (ResNet-18/34) or :class:`Bottleneck` (ResNet-50+).
        layers: number of blocks in each of the four stages.
        num_classes, in_channels: logits and input channels.
    """

    def __init__(self, block: Block, layers: list[int], num_classes: int = 1000,
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = make_stage(block, inplanes, planes, n, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes * block.expansion
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


_IMAGENET = dict(input_shape=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 num_classes=1000, resize=256)


@register_arch("resnet18", **_IMAGENET)
def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """ResNet-18 (He et al. 2016), torchvision layout; 11.7M params at 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@register_arch("resnet50", **_IMAGENET)
def resnet50(num_classes: int, in_channels: int) -> nn.Module:
    """ResNet-50 (He et al. 2016), torchvision layout (V1.5); 25.6M params at 1000 classes."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)
