"""The seeds' autoencoder: 784 → 20 → 784."""

from __future__ import annotations

import torch
from torch import nn

from zoo.registry import TrainRecipe, register_model


class AutoEncoder(nn.Module):
    """``encoder`` maps (batch, 1, 28, 28) pixels to a 20-d code; ``decoder`` maps it back to pixels in [0, 1]."""

    def __init__(self, code: int = 20):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, code), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code, 784), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register_model(
    "seed-autoencoder",
    family="autoencoder",
    task="reconstruction",
    recipe=TrainRecipe(epochs=150, lr=3e-3, batch_size=64, seed=6),
    description="The seeds' dense autoencoder, 784-20-784 with ReLU code and sigmoid output.",
    primary_metric="mse",
    higher_is_better=False,
    class_names=(),
)
def seed_autoencoder() -> AutoEncoder:
    """The seeds' 784-20-784 autoencoder."""
    return AutoEncoder()
