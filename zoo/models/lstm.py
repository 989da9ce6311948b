"""The seeds' sequential MNIST: an LSTM reads each digit as 28 rows of 28 pixels."""

from __future__ import annotations

import torch
from torch import nn

from zoo.models.common import Normalize
from zoo.registry import TrainRecipe, register_model


class RowLSTM(nn.Module):
    """Input (batch, 1, 28, 28); time step t is image row t; the last hidden state feeds a linear head."""

    def __init__(self, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.norm = Normalize()
        self.lstm = nn.LSTM(input_size=28, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.norm(x)
        if rows.dim() == 4:  # (batch, 1, 28, 28) images become (batch, 28 steps, 28 features)
            rows = rows[:, 0]
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])


@register_model(
    "seed-lstm",
    family="lstm",
    task="classification",
    recipe=TrainRecipe(epochs=30, lr=2e-3, batch_size=64, augment=True, seed=4, extra={"clip_grad_norm": 1.0}),
    description="LSTM with 128 hidden units over 28 rows of 28 features, linear head (the seeds' sequential MNIST).",
    primary_metric="accuracy",
)
def seed_lstm() -> RowLSTM:
    """The seeds' row-by-row LSTM classifier."""
    return RowLSTM()
