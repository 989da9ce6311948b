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


class RowsAttention(torch.nn.Module):
    """A user's model reading digit rows: Conv1d, a token embedding of row sums, attention, a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(28, 32, 3, padding=1)
        self.embed = torch.nn.Embedding(29, 32)
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0]  # (batch, 28 rows, 28 columns)
        tokens = self.conv(rows.transpose(1, 2)).transpose(1, 2) + self.embed((rows > 0.5).sum(2))
        mixed, _ = self.attn(tokens, tokens, tokens)
        return self.head(mixed.mean(1))


def test_conv1d_and_embedding_weights_are_pruned_and_shared_and_attention_is_named_as_left_dense():
    from compress.prune import dense_weights_left, dense_weights_warning

    torch.manual_seed(0)
    data, model = data_for("rows", data="mnist"), RowsAttention().eval()
    pruned = prune_unstructured(model, PruneUnstructuredConfig(sparsity=0.9, epochs=0, scope="layer"), data)
    targets = {type(m).__name__ for m, _ in prunable_weights(pruned)}
    assert {"Conv1d", "Embedding", "Linear"} <= targets  # the head and attention's output projection are Linear
    for module, name in prunable_weights(pruned):
        assert (getattr(module, name) == 0).float().mean().item() == pytest.approx(0.9, abs=0.01)
    shared = share_weights(pruned, WeightSharingConfig(bits=4, epochs=0), data)
    for weight in (shared.conv.weight, shared.embed.weight):
        assert torch.unique(weight[weight != 0]).numel() <= 16
    # attention's input projection is no layer `weight`: it stays dense, and the warning says so
    assert [(name, kind) for name, kind, _ in dense_weights_left(shared)] == [("attn.in_proj_weight", "MultiheadAttention")]
    warning = dense_weights_warning(shared)
    assert warning.startswith("1 weight tensor(s)") and "attn.in_proj_weight (MultiheadAttention)" in warning
    assert dense_weights_warning(zoo.load("lenet5")) is None


def test_a_run_warns_about_weights_its_pruning_left_dense(tmp_path):
    from compress import run

    torch.manual_seed(0)
    said: list[str] = []
    result = run(RowsAttention(), [{"step": "prune-unstructured", "sparsity": 0.5, "epochs": 0}], data=data_for("rows", data="mnist"),
                 out_dir=tmp_path / "run", export=False, progress=said.append)
    warned = [m for m in said if m.startswith("warning: prune-unstructured:") and "attn.in_proj_weight" in m]
    assert len(warned) == 1
    assert "attn.in_proj_weight" in result.results["timings"]["steps"][0]["warnings"][0]


def test_ties_at_the_threshold_do_not_overshoot_the_sparsity(pruned_lenet):
    data, _ = pruned_lenet
    # two-bit sharing first leaves every layer with 3 distinct magnitudes, so most weights tie
    shared = share_weights(zoo.load("lenet5"), WeightSharingConfig(bits=2, epochs=0), data)
    pruned = prune_unstructured(shared, PruneUnstructuredConfig(sparsity=0.3, epochs=0), data)
    weights = torch.cat([getattr(m, p).flatten() for m, p in prunable_weights(pruned)])
    assert (weights == 0).float().mean().item() == pytest.approx(0.3, abs=1e-4)


def test_bad_weight_sharing_iterations_and_a_damaged_artifact_are_one_line(pruned_lenet, tmp_path):
    from compress.variant import VariantError

    for bad in (0, -3, 2.5, True):
        with pytest.raises(SlimlensError, match="iterations=.* must be a whole number of k-means iterations"):
            WeightSharingConfig(iterations=bad)
    data, pruned = pruned_lenet
    variant = compressed_storage(pruned, CompressedStorageConfig(), data)
    variant.name = "dc"
    meta_path = variant.save(tmp_path)
    blob = variant.artifact.read_bytes()
    variant.artifact.write_bytes(blob[: len(blob) // 2])
    import json

    meta = json.loads(meta_path.read_text())
    meta.pop("sha256", None)  # without the checksum, decoding itself must fail cleanly
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VariantError, match="cannot be decoded .*damaged or not a slimlens .slz file"):
        load_variant(meta_path)
