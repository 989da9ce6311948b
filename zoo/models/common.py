"""Layers shared by the zoo architectures."""

from __future__ import annotations

import torch
from torch import nn

from zoo.registry import MNIST_MEAN, MNIST_STD


class Normalize(nn.Module):
    """Maps [0, 1] pixels to the standardised scale a model was trained on, so callers feed raw pixels."""

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD):
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"
