"""Datasets: the bundled split, the binary task, and a torchvision-format folder read without downloading."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

import zoo


def test_bundled_split_is_stratified():
    train, test = zoo.dataset("mnist", "train"), zoo.dataset("mnist", "test")
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    image, label = test[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and isinstance(label, int)


def test_binary_task_labels_digits_at_least_five():
    plain, binary = zoo.dataset("mnist", "test"), zoo.dataset("mnist-ge5", "test")
    assert torch.equal(binary.labels, (plain.labels >= 5).long())


def test_unknown_dataset_and_split():
    with pytest.raises(zoo.DataError, match="unknown dataset"):
        zoo.dataset("cifar10")
    with pytest.raises(zoo.DataError, match="unknown split"):
        zoo.dataset("mnist", split="validation")


def test_missing_data_root_never_downloads(tmp_path):
    with pytest.raises(zoo.DataError, match="nothing is downloaded"):
        zoo.dataset("mnist", "test", root=tmp_path / "nowhere")
    with pytest.raises(zoo.DataError, match="nothing is downloaded") as refused:
        zoo.dataset("mnist", "test", root=tmp_path)
    assert "download=True" not in str(refused.value)  # torchvision's advice to download is not passed on


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_torchvision_folder_is_read_through_torchvision(tmp_path):
    """A real torchvision MNIST layout (idx files) built from the bundled digits reads back identically."""
    test = zoo.dataset("mnist", "test")
    images = (test.images[:50, 0] * 255).round().numpy().astype(np.uint8)
    labels = test.labels[:50].numpy().astype(np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    for name in list(raw.iterdir()):  # torchvision reads the unpacked files
        with gzip.open(name) as src:
            (raw / name.name[:-3]).write_bytes(src.read())
    loaded = zoo.dataset("mnist", "test", root=tmp_path)
    assert len(loaded) == 50 and loaded.source.startswith("torchvision:")
    assert torch.allclose(loaded.images, test.images[:50], atol=1 / 255)
    assert torch.equal(loaded.labels, test.labels[:50])
    accuracy = zoo.evaluate("seed-cnn", data_root=tmp_path)["accuracy"]
    assert accuracy > 0.9
