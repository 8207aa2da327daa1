"""CIFAR-10 ResNet-20/32/44/56/110 in the layout of akamaster/pytorch_resnet_cifar10.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385), Section 4.2: a 3×3 conv with 16 filters, three stages of
``n`` basic blocks with 16/32/64 filters on 32×32/16×16/8×8 maps, global average
pooling and a linear classifier; depth = 6n + 2. Shape-changing blocks use the
parameter-free "option A" shortcut: subsample by 2 and zero-pad the new channels.

State_dict keys (``conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, linear``)
match the akamaster checkpoints, e.g. ``resnet20-12fca82f.th`` (269,722 params).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_arch
from .resnet import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, conv3x3, make_stage


class ShortcutA(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` zero-padded with (cout - cin) // 2 channels each side.

    Shapes: (N, cin, H, W) → (N, cout, ceil(H/s), ceil(W/s)). No parameters.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if (cout - cin) % 2 or cout < cin:
            raise ValueError(f"option-A shortcut needs cout - cin even and >= 0, got {cin}→{cout}")
        self.pad = (cout - cin) // 2
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad, self.pad))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs (He et al. 2016, §4.2).

    Shapes: (N, in_channels, 32, 32) float32 → (N, num_classes) logits (any H, W ≥ 4 work).

    Args:
        blocks: n, the number of basic blocks per stage (3 → ResNet-20, 18 → ResNet-110).
        num_classes, in_channels: logits and input channels.
    """

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = make_stage(BasicBlock, 16, 16, blocks, 1, shortcut=ShortcutA)
        self.layer2 = make_stage(BasicBlock, 16, 32, blocks, 2, shortcut=ShortcutA)
        self.layer3 = make_stage(BasicBlock, 32, 64, blocks, 2, shortcut=ShortcutA)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # akamaster's _weights_init
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.linear(x)


_CIFAR = dict(input_shape=(3, 32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=10)


def _register(depth: int) -> None:
    n = (depth - 2) // 6

    def build(num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(n, num_classes, in_channels)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = (f"CIFAR ResNet-{depth} (He et al. 2016, §4.2), {n} blocks per stage, "
                     "option-A shortcuts, akamaster layout.")
    register_arch(f"resnet{depth}", **_CIFAR)(build)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
