"""``tinynet``: a very small CNN for tests and the demo (no paper; a toy).

It contains one of each pattern the quantizer must handle: conv+BN+ReLU, a
residual block with an Add (:class:`~.resnet.BasicBlock`), a strided
conv+BN+ReLU6, global average pooling, flatten and a Linear layer.
2,626 parameters for 1 input channel and 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_arch
from .resnet import BasicBlock, conv3x3


class TinyNet(nn.Module):
    """Stem conv+BN+ReLU → BasicBlock (Add) → 3×3/2 conv+BN+ReLU6 → GAP → Linear.

    Shapes: (N, in_channels, H, W) float32 (8×8 by default) → (N, num_classes) logits.

    Args:
        num_classes, in_channels: logits and input channels.
        width: channels of the stem and the residual block (the last conv doubles them).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.block = BasicBlock(width, width)
        self.conv2 = conv3x3(width, 2 * width, stride=2)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.block(x)
        x = F.relu6(self.bn2(self.conv2(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


@register_arch("tinynet", input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), num_classes=10)
def tinynet(num_classes: int, in_channels: int) -> nn.Module:
    """A toy CNN (stem, one residual block, one strided conv, GAP, Linear) for tests and the demo."""
    return TinyNet(num_classes, in_channels)
