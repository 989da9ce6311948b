"""The seeds' dense models: softmax regression and the tiny binary 'simplenet'."""

from __future__ import annotations

import torch
from torch import nn

from zoo.models.common import Normalize
from zoo.registry import TrainRecipe, register_model


class SoftmaxRegression(nn.Module):
    """A single linear layer on the 784 normalised pixels; outputs 10 logits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.norm = Normalize()
        self.linear = nn.Linear(784, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.norm(x), 1))


class SimpleNet(nn.Module):
    """Dense 10 ReLU → Dense 1 sigmoid: outputs P(digit >= 5), shape (batch, 1)."""

    def __init__(self):
        super().__init__()
        self.norm = Normalize()
        self.hidden = nn.Linear(784, 10)
        self.out = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(torch.relu(self.hidden(torch.flatten(self.norm(x), 1)))))


@register_model(
    "softmax-regression",
    family="mlp",
    task="classification",
    recipe=TrainRecipe(epochs=60, lr=1e-3, batch_size=64, weight_decay=1e-4, seed=7),
    description="Multinomial logistic regression on raw pixels (784 → 10), the seeds' softmax model.",
    primary_metric="accuracy",
)
def softmax_regression() -> SoftmaxRegression:
    """The seeds' softmax regression."""
    return SoftmaxRegression()


@register_model(
    "simplenet",
    family="mlp",
    task="binary-classification",
    dataset="mnist-ge5",
    class_names=("digit<5", "digit>=5"),
    recipe=TrainRecipe(epochs=100, lr=2e-3, batch_size=64, weight_decay=1e-4, augment=True, seed=8),
    description="The seeds' Dense 10 ReLU → Dense 1 sigmoid, telling digits >= 5 from digits < 5.",
    primary_metric="accuracy",
)
def simplenet() -> SimpleNet:
    """The seeds' tiny binary network."""
    return SimpleNet()
