"""Weight sharing and compressed storage on the real LeNet-5, with tiny fine-tuning budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from compress.context import data_for
from compress.prune import PruneUnstructuredConfig, prunable_weights, prune_unstructured
from compress.sharing import WeightSharingConfig, kmeans_1d, share_weights
from compress.sparse import (
    CompressedStorageConfig,
    CompressedVariant,
    compressed_storage,
    decode_state,
    encode_state,
    huffman_decode,
    huffman_encode,
)
from compress.variant import load_variant
from zoo.cards import weights_path
from zoo.errors import SlimlensError


@pytest.fixture(scope="module")
def pruned_lenet():
    data = data_for("lenet5")
    return data, prune_unstructured(zoo.load("lenet5"), PruneUnstructuredConfig(sparsity=0.92, epochs=0), data)


def test_shared_layers_hold_at_most_2_to_the_bits_values(pruned_lenet):
    data, pruned = pruned_lenet
    shared = share_weights(pruned, WeightSharingConfig(bits=4, conv_bits=5, epochs=0.02), data)
    for (module, name), (before, _) in zip(prunable_weights(shared), prunable_weights(pruned)):
        weight = getattr(module, name)
        bits = 5 if isinstance(module, torch.nn.Conv2d) else 4
        assert torch.unique(weight[weight != 0]).numel() <= 2**bits
        assert torch.equal(weight == 0, getattr(before, name) == 0)  # pruned zeros stay zero
    assert not any(hasattr(m, "parametrizations") for m in shared.modules())
    assert data.evaluate(shared)["accuracy"] > data.evaluate(pruned)["accuracy"] - 0.02


def test_deep_compression_artifact_round_trips_exactly(pruned_lenet, tmp_path):
    data, pruned = pruned_lenet
    shared = share_weights(pruned, WeightSharingConfig(bits=4, epochs=0), data)
    variant = compressed_storage(shared, CompressedStorageConfig(), data)
    variant.name = "dc"
    reloaded = load_variant(variant.save(tmp_path))
    assert isinstance(reloaded, CompressedVariant)
    state = reloaded.module.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in shared.state_dict().items())
    example = data.example_input(8)
    assert torch.equal(variant(example), reloaded(example))
    # 92% sparse with 4-bit codebooks: well past 20x smaller than the float32 safetensors of the original
    assert variant.artifact.stat().st_size * 20 < weights_path("lenet5").stat().st_size


def test_kmeans_linear_init_finds_clusters():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)])
    centroids, assign = kmeans_1d(values, 3)
    assert torch.allclose(centroids, torch.tensor([-1.0, 0.5, 2.0]))
    assert torch.equal(centroids[assign], values)


def test_huffman_and_state_encoding_are_lossless():
    rng = np.random.default_rng(0)
    for alphabet in (1, 3, 32, 256):
        symbols = rng.geometric(0.2, size=3000) % alphabet
        assert (huffman_decode(huffman_encode(symbols, alphabet)) == symbols).all()
    state = {"w": torch.randn(300, 7), "count": torch.tensor(3), "few": torch.tensor([0.5, 0.0, 0.5] * 40), "empty": torch.zeros(100)}
    decoded = decode_state(encode_state(state))
    assert all(torch.equal(state[k], decoded[k]) and state[k].dtype == decoded[k].dtype for k in state)


def test_bits_out_of_range_are_refused():
    with pytest.raises(SlimlensError, match="bits=9"):
        WeightSharingConfig(bits=9)
