"""``load``: a trained zoo model in eval mode, its weights verified against its card."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from zoo.cards import card as read_card
from zoo.cards import weights_path
from zoo.registry import build
from zoo.weights import load_into, read_state_dict


def load(name: str, root: str | Path | None = None) -> nn.Module:
    """Return trained zoo model ``name`` in eval mode; ``root`` is a folder of retrained weights and cards.

    >>> import zoo
    >>> model = zoo.load("seed-cnn")
    >>> model(zoo.dataset("mnist", "test")[0][0][None]).shape
    torch.Size([1, 10])
    """
    model_card = read_card(name, root)
    path = weights_path(name, root)
    state = read_state_dict(path, expected_sha256=model_card.weights["sha256"])
    model = load_into(build(name), state, path)
    return model.eval()
