"""MobileNetV2 in torchvision's parameter layout (without importing torchvision).

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018 (arXiv:1801.04381), Table 2, width multiplier 1.0.
Keys ``features.{i}…`` / ``classifier.1`` match torchvision's ``mobilenet_v2`` so
its ``IMAGENET1K_V1`` checkpoint (``mobilenet_v2-b0353104.pth``) loads with
``strict=True``. Activations are ReLU6; the projection 1×1 conv is linear.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_arch
from .resnet import IMAGENET_MEAN, IMAGENET_STD

#: (expansion t, output channels c, repeats n, first stride s), paper Table 2
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% below ``v`` (torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU6(nn.Sequential):
    """Conv (``0``) + BatchNorm (``1``) + ReLU6 (``2``); 'same' padding, no conv bias."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """Expand 1×1 (if t > 1), depthwise 3×3 (strided), linear project 1×1 + BN; Add when shapes allow.

    Shapes: (N, inp, H, W) float32 → (N, oup, H/stride, W/stride).
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), torchvision layout.

    Shapes: (N, in_channels, 224, 224) float32 → (N, num_classes) logits.

    Args:
        num_classes, in_channels: logits and input channels.
        width_mult: channel multiplier (1.0 for the published checkpoint).
        dropout: dropout before the classifier (``classifier.0``; identity in eval mode).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(in_channels, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


@register_arch("mobilenet_v2", input_shape=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
               num_classes=1000, resize=256)
def mobilenet_v2(num_classes: int, in_channels: int) -> nn.Module:
    """MobileNetV2 1.0 (Sandler et al. 2018), torchvision layout; 3.5M params at 1000 classes."""
    return MobileNetV2(num_classes, in_channels)
