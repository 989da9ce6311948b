"""A residual CNN for 28x28 digits built from torchvision's ``BasicBlock``."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from zoo.models.common import Normalize
from zoo.registry import TrainRecipe, register_model


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    layers = [BasicBlock(in_ch, out_ch, stride, downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetMNIST(nn.Module):
    """Stem 3x3 conv, three stages of two BasicBlocks (28→14→7 px), global pool, linear head."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(Normalize(), nn.Conv2d(1, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.layer1 = _stage(w1, w1, 2, 1)
        self.layer2 = _stage(w1, w2, 2, 2)
        self.layer3 = _stage(w2, w3, 2, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(w3, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (batch, widths[-1])."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(
    "resnet-mnist",
    family="cnn",
    task="classification",
    recipe=TrainRecipe(epochs=15, lr=2e-3, batch_size=64, weight_decay=5e-4, optimizer="adamw", augment=True, seed=3),
    description="ResNet of torchvision BasicBlocks (32-64-128 wide, BatchNorm, skips): distillation teacher and pruning showcase.",
    primary_metric="accuracy",
)
def resnet_mnist() -> ResNetMNIST:
    """The residual CNN, full width."""
    return ResNetMNIST()
