"""Shared fixtures: real zoo models and data, small enough to keep the suite fast."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo.cards import TRAINED_DIR

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist_test() -> zoo.datasets.DigitDataset:
    """The bundled 1,000-image test split."""
    return zoo.dataset("mnist", "test")


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    """The trained seed-cnn, loaded once per test module."""
    return zoo.load("seed-cnn")


@pytest.fixture()
def trained_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped weights and cards that a test may damage."""
    target = tmp_path / "trained"
    shutil.copytree(TRAINED_DIR, target)
    return target


class HeadFirst(nn.Module):
    """A user's model that defines its output layer before the layers feeding it."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 10)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture()
def head_first() -> type[nn.Module]:
    """The class of a user's model whose output layer is not the last one defined (prune and distill must find it)."""
    return HeadFirst
