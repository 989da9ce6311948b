"""The variant interface: a PyTorch module and an ONNX Runtime session answer the same call and round-trip."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import zoo
from compress import OnnxVariant, TorchVariant, VariantError, load_variant
from compress.context import data_for
from compress.export import ExportOnnxConfig, export_onnx_step


def test_torch_variant_round_trip(tmp_path, mnist_test):
    variant = TorchVariant("original", module=zoo.load("seed-cnn"), source={"zoo": "seed-cnn"})
    meta = variant.save(tmp_path)
    again = load_variant(meta)
    batch = mnist_test.images[:16]
    assert again.format == "torch" and torch.equal(again(batch), variant(batch))
    assert json.loads(meta.read_text())["artifact"] == "original.safetensors"


def test_onnx_variant_answers_like_torch(tmp_path, mnist_test):
    model = zoo.load("seed-lstm")
    path = tmp_path / "lstm.onnx"
    torch.onnx.export(model, (mnist_test.images[:2],), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    onnx_variant = OnnxVariant("lstm-onnx", artifact=path)
    batch = mnist_test.images[:32]
    assert torch.allclose(onnx_variant(batch), TorchVariant("t", module=model)(batch), atol=1e-4)
    again = load_variant(onnx_variant.save(tmp_path / "saved"))
    assert torch.allclose(again(batch), onnx_variant(batch))
    # Metrics take any forward function, so an ONNX session is measured exactly like the module.
    assert zoo.evaluate("seed-lstm", forward=again)["accuracy"] == pytest.approx(zoo.card("seed-lstm").metrics["accuracy"], abs=0.002)


def test_channel_pruned_weights_rebuild_from_the_builder(tmp_path, mnist_test):
    """A model whose layers lost channels reloads from its zoo builder plus the saved shapes."""
    model = zoo.load("seed-cnn")
    conv, nxt = model.features[4], model.features[7]  # Conv(32→64), Conv(64→64)
    keep = torch.arange(0, 64, 2)
    conv.weight = torch.nn.Parameter(conv.weight[keep].clone())
    conv.bias = torch.nn.Parameter(conv.bias[keep].clone())
    conv.out_channels = 32
    nxt.weight = torch.nn.Parameter(nxt.weight[:, keep].clone())
    nxt.in_channels = 32
    variant = TorchVariant("halved", module=model, source={"zoo": "seed-cnn"})
    again = load_variant(variant.save(tmp_path))
    assert again.module.features[4].out_channels == 32
    assert torch.equal(again(mnist_test.images[:8]), variant(mnist_test.images[:8]))


def test_broken_variant_files_are_clear_errors(tmp_path):
    with pytest.raises(VariantError, match="not found"):
        load_variant(tmp_path / "nothing.variant.json")
    (tmp_path / "bad.variant.json").write_text("{not json")
    with pytest.raises(VariantError, match="not valid JSON"):
        load_variant(tmp_path / "bad.variant.json")
    (tmp_path / "x.onnx").write_bytes(b"garbage")
    variant = OnnxVariant("x", artifact=tmp_path / "x.onnx")
    with pytest.raises(VariantError, match="cannot be loaded by ONNX Runtime"):
        variant(torch.zeros(1, 1, 28, 28))


def test_variant_metadata_cannot_name_code_outside_slimlens(tmp_path):
    meta = tmp_path / "evil.variant.json"
    meta.write_text(json.dumps({"name": "evil", "format": "torch", "loader": "os:getcwd"}))
    with pytest.raises(VariantError, match="not one of slimlens' readers"):
        load_variant(meta)
    meta.write_text(json.dumps({"name": "int8", "format": "torch", "loader": "compress.quantize:load_int8_variant"}))
    with pytest.raises(VariantError, match="is incomplete"):  # a missing key is one line, not a traceback
        load_variant(meta)
    meta.write_text(json.dumps([1, 2]))
    with pytest.raises(VariantError, match="no variant name"):
        load_variant(meta)


def test_a_user_builder_named_by_variant_metadata_needs_trust(tmp_path):
    meta = tmp_path / "mine.variant.json"
    meta.write_text(json.dumps({"name": "mine", "format": "torch", "artifact": "mine.safetensors", "source": {"builder": "os:getcwd"}}))
    with pytest.raises(VariantError, match=r"calling os:getcwd\(\), code named by the file; pass --trust-code"):
        load_variant(meta)
    with pytest.raises(VariantError, match="builder os:getcwd returned str, not a torch.nn.Module"):  # trusted, and checked
        load_variant(meta, trust_code=True)


def test_a_plain_onnx_variant_of_a_user_model_loads_without_trust(tmp_path):
    # ONNX Runtime runs the file; the builder it names is never called, so there is nothing to trust
    data = data_for("softmax-regression")
    exported = export_onnx_step(zoo.load("softmax-regression"), ExportOnnxConfig(), data)
    shutil.copy(exported.artifact, tmp_path / "mine.onnx")
    meta = tmp_path / "mine.variant.json"
    meta.write_text(json.dumps({"name": "mine", "format": "onnx", "artifact": "mine.onnx", "source": {"builder": "os:getcwd"}}))
    images = data.test.images[:4]
    assert torch.allclose(load_variant(meta)(images), exported(images), atol=1e-5)


def test_a_model_file_given_for_its_metadata_names_the_metadata(tmp_path):
    saved = TorchVariant(name="fp32", module=zoo.load("seed-cnn"), source={"zoo": "seed-cnn"}).save(tmp_path)
    with pytest.raises(VariantError, match=f"fp32.safetensors is a model file, not variant metadata; pass the .variant.json beside it: {saved}"):
        load_variant(tmp_path / "fp32.safetensors")
    shutil.copy(tmp_path / "fp32.safetensors", tmp_path / "orphan.safetensors")  # binary, and no metadata names it
    with pytest.raises(VariantError, match="none in .* names orphan.safetensors"):
        load_variant(tmp_path / "orphan.safetensors")
    (tmp_path / "odd.variant.json").write_bytes(bytes(range(256)))
    with pytest.raises(VariantError, match="odd.variant.json is a binary file, not variant metadata"):
        load_variant(tmp_path / "odd.variant.json")
