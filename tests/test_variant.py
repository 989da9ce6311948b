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
from zoo.errors import SlimlensError


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
    (tmp_path / "mine.safetensors").write_bytes(b"")  # present: a missing file is reported before the builder is called
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


def _saved_seed_cnn(folder):
    """A saved seed-cnn variant's metadata path and its parsed metadata (the sha256 dropped, as a hand edit would)."""
    meta_path = TorchVariant("v", module=zoo.load("seed-cnn"), source={"zoo": "seed-cnn"}).save(folder)
    meta = json.loads(meta_path.read_text())
    meta.pop("sha256")
    return meta_path, meta


@pytest.mark.parametrize("damage", ["artifact-null", "artifact-folder", "missing-key", "unexpected-key", "zoo-list"])
def test_damaged_variant_metadata_or_weights_are_one_line(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    meta_path, meta = _saved_seed_cnn(tmp_path)
    weights = tmp_path / "v.safetensors"
    if damage == "artifact-null":
        meta["artifact"] = None
    elif damage == "artifact-folder":
        meta["artifact"] = "."
    elif damage == "zoo-list":
        meta["source"] = {"zoo": ["seed-cnn"]}
    else:
        state = load_file(weights)
        key = "features.1.bias"
        if damage == "missing-key":
            del state[key]
        else:
            state["head.extra.weight"] = state[key].clone()
        save_file(state, weights)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SlimlensError) as caught:  # VariantError, or WeightsError for the weights file itself
        load_variant(meta_path)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_weights_of_another_architecture_are_refused_not_resized(tmp_path):
    from safetensors.torch import load_file, save_file

    meta_path, meta = _saved_seed_cnn(tmp_path)
    state = load_file(tmp_path / "v.safetensors")
    head = [k for k in state if k.endswith("weight")][-1]
    state[head] = state[head][:3].clone()  # a 3-class head: fewer rows, which pruning could have made...
    save_file(state, tmp_path / "v.safetensors")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VariantError, match=f"{head} of shape .* where its metadata records"):  # ...but not what was saved
        load_variant(meta_path)
    state[head] = torch.zeros(state[head].shape[0], state[head].shape[1] + 5)  # wider than the architecture allows
    save_file(state, tmp_path / "v.safetensors")
    meta.pop("shapes")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VariantError, match="which pruning cannot make"):
        load_variant(meta_path)


def test_a_channel_pruned_half_precision_variant_reloads_and_runs(tmp_path, mnist_test):
    from compress.prune import PruneStructuredConfig, prune_structured
    from compress.quantize import HalfPrecisionConfig, half_precision

    data = data_for("seed-cnn")
    pruned = prune_structured(zoo.load("seed-cnn"), PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.0), data)
    half = half_precision(pruned, HalfPrecisionConfig(dtype="bfloat16"), data)
    again = load_variant(half.save(tmp_path))
    batch = mnist_test.images[:8]
    assert torch.equal(again(batch), half(batch))
    assert {p.dtype for p in again.stand_in.parameters()} == {torch.float32}  # all one dtype, so explanations run


def test_variant_metadata_names_files_beside_it_only(tmp_path):
    meta_path, meta = _saved_seed_cnn(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.copy(tmp_path / "run" / "v.safetensors", elsewhere)
    for value in (str(elsewhere), "../elsewhere.safetensors"):
        meta["artifact"] = value
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(VariantError, match="must name a file in the same folder"):
            load_variant(meta_path)


def test_a_replaced_onnx_file_is_refused(tmp_path, mnist_test):
    model = zoo.load("seed-cnn")
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (mnist_test.images[:1],), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    meta = OnnxVariant("m", artifact=path).save(tmp_path / "saved")
    other = tmp_path / "other.onnx"  # a valid model of another kind, put in its place
    torch.onnx.export(zoo.load("lenet5"), (mnist_test.images[:1],), str(other), dynamo=False, input_names=["x"])
    shutil.copy(other, tmp_path / "saved" / "m.onnx")
    with pytest.raises(VariantError, match="does not match its metadata sha256"):
        load_variant(meta)


def test_variant_metadata_keeps_the_weights_it_was_compressed_from(tmp_path):
    from zoo.weights import weights_sha256

    model = zoo.load("seed-cnn")
    sha = weights_sha256(model)
    assert sha == zoo.card("seed-cnn").weights["sha256"]  # the weights themselves hash as their zoo card says
    meta = TorchVariant("v", module=model, source={"zoo": "seed-cnn"}, original_weights_sha256=sha).save(tmp_path)
    assert load_variant(meta).original_weights_sha256 == sha
    data = json.loads(meta.read_text())
    del data["original_weights_sha256"]  # a variant written before the key was recorded
    meta.write_text(json.dumps(data))
    assert load_variant(meta).original_weights_sha256 is None
    meta.write_text(json.dumps({**data, "original_weights_sha256": 12}))
    with pytest.raises(VariantError, match="original_weights_sha256 12"):
        load_variant(meta)


def test_a_damaged_variant_names_its_error_once(tmp_path):
    meta_path, meta = _saved_seed_cnn(tmp_path)
    meta["source"] = {"zoo": ["seed-cnn"]}  # a hand edit: a list where a name belongs
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(VariantError) as caught:
        load_variant(meta_path)
    message = str(caught.value)
    assert "cannot be loaded (TypeError: " in message and "TypeError: TypeError" not in message, message
