"""The seeds' Keras CNN: Conv32 → pool → Conv64 → pool → Conv64 → Dense64 → Dense10."""

from __future__ import annotations

import torch
from torch import nn

from zoo.models.common import Normalize
from zoo.registry import TrainRecipe, register_model


class SeedCNN(nn.Module):
    """``features`` ends at the 64-unit penultimate layer (used for Fréchet distances); ``head`` is the classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            Normalize(),
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 3 * 3, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(
    "seed-cnn",
    family="cnn",
    task="classification",
    recipe=TrainRecipe(epochs=20, lr=1e-3, batch_size=64, augment=True, seed=1),
    description="The seeds' Keras CNN (93K params): three 3x3 convolutions, two max-pools, Dense 64, Dense 10.",
    primary_metric="accuracy",
)
def seed_cnn() -> SeedCNN:
    """The seeds' small Keras-style CNN."""
    return SeedCNN()
