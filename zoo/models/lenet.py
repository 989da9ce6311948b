"""LeNet-5 as Caffe defines it and Deep Compression (Han et al., 2016) compressed it 39x."""

from __future__ import annotations

import torch
from torch import nn

from zoo.models.common import Normalize
from zoo.registry import TrainRecipe, register_model


class LeNet5(nn.Module):
    """conv 20 5x5 → pool → conv 50 5x5 → pool → fc 500 → fc 10 (431,080 parameters)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            Normalize(),
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(50 * 4 * 4, 500), nn.ReLU(),
        )
        self.head = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(
    "lenet5",
    family="cnn",
    task="classification",
    recipe=TrainRecipe(epochs=20, lr=1e-3, batch_size=64, augment=True, seed=2),
    description="Caffe's LeNet-5 (431K params), the network Deep Compression shrank 39x.",
    primary_metric="accuracy",
)
def lenet5() -> LeNet5:
    """Caffe's LeNet-5, as used by Deep Compression."""
    return LeNet5()
