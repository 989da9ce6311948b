"""Digit datasets: the bundled 5,000-image MNIST subset, or a full torchvision-format MNIST folder.

Images come out as float tensors of shape 1x28x28 with pixel values in [0, 1]; every zoo model
normalises internally, so a dataset item can be fed to a model as it is.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.errors import DataError

BUNDLE = Path(__file__).parent / "data" / "mnist5k.npz"
BUNDLE_SHA256 = "be9bd065e4ad3e16dd0f7943971443cec87fb874f1db75c028ac4835188ada3e"
DATASETS = ("mnist", "mnist-ge5")
SPLITS = ("train", "test")


class DigitDataset(Dataset):
    """In-memory digits: ``images`` is an (N, 1, 28, 28) float tensor in [0, 1], ``labels`` (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str, split: str, source: str):
        self.images = images
        self.labels = labels
        self.name = name
        self.split = split
        self.source = source

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"DigitDataset({self.name!r}, split={self.split!r}, n={len(self)}, source={self.source!r})"


@lru_cache(maxsize=1)
def _bundle_arrays() -> dict[str, np.ndarray]:
    if not BUNDLE.is_file():
        raise DataError(f"bundled digits missing: {BUNDLE}; reinstall slimlens or rebuild it with python -m zoo.data.make_bundle")
    digest = hashlib.sha256(BUNDLE.read_bytes()).hexdigest()
    if digest != BUNDLE_SHA256:
        raise DataError(f"bundled digits {BUNDLE} have sha256 {digest[:12]}…, expected {BUNDLE_SHA256[:12]}…; restore the file from the repository")
    with np.load(BUNDLE) as npz:
        return {key: npz[key] for key in npz.files}


def _torchvision_arrays(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import MNIST

    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder; point it at a folder holding MNIST/raw (torchvision layout); nothing is downloaded")
    try:
        ds = MNIST(str(root), train=(split == "train"), download=False)
    except RuntimeError:  # torchvision's "Dataset not found. You can use download=True" would point at a download
        raise DataError(f"no torchvision MNIST under {root}: expected {root}/MNIST/raw/*-ubyte files; nothing is downloaded") from None
    return ds.data.numpy(), ds.targets.numpy()


def dataset(name: str = "mnist", split: str = "train", root: str | Path | None = None) -> DigitDataset:
    """Return the digits of ``name`` ("mnist", or "mnist-ge5" labelled 1 for digits >= 5) for ``split``.

    With ``root`` the images come from a torchvision-format MNIST folder (60,000 / 10,000);
    without it, from the bundled 4,000 / 1,000 subset. Nothing is ever downloaded.

    >>> train = dataset("mnist", split="train")
    >>> image, label = train[0]; image.shape
    torch.Size([1, 28, 28])
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    if root is None:
        arrays = _bundle_arrays()
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        source = f"bundled:{BUNDLE.name}"
    else:
        images, labels = _torchvision_arrays(Path(root), split)
        source = f"torchvision:{root}"
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(labels)).long()
    if name == "mnist-ge5":
        y = (y >= 5).long()
    return DigitDataset(x, y, name, split, source)
