"""ONNX export of real zoo models: parity with PyTorch, dynamic batch, save/load, and failures that say why."""

from __future__ import annotations

import pytest
import torch

import zoo
from compress import load_variant
from compress.context import data_for
from compress.export import ExportError, ExportOnnxConfig, check_parity, export_onnx, export_onnx_step, parity_inputs
from compress.steps import get_step
from compress.variant import OnnxVariant


@pytest.mark.parametrize("name", ["seed-cnn", "seed-lstm", "dcgan-g", "resnet-mnist"])
def test_fp32_export_matches_pytorch_on_the_test_split(name, tmp_path):
    model = zoo.load(name)
    data = data_for(name)
    variant = export_onnx_step(model, ExportOnnxConfig(), data)
    parity = check_parity(model, variant, parity_inputs(data, 256))
    assert parity["passed"], parity
    assert parity["max_abs_diff"] < 1e-3
    if data.task == "classification":
        assert parity["argmax_agreement"] == 1.0
    assert variant.steps[0]["exported_with"]["exporter"] in ("dynamo", "legacy")
    # no exporter debug text (stack traces naming this machine's paths) ships in the artifact
    assert b"stack_trace" not in variant.artifact.read_bytes() and b"site-packages" not in variant.artifact.read_bytes()
    assert variant(data.example_input(3)).shape[0] == 3  # the batch axis is dynamic
    loaded = load_variant(variant.save(tmp_path))
    assert torch.equal(loaded(data.example_input(5)), variant(data.example_input(5)))


def test_export_step_is_registered_and_leaves_the_model_untouched():
    model = zoo.load("seed-cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    variant = get_step("export_onnx").function(model, ExportOnnxConfig(name="cnn-onnx", exporter="legacy"), data_for("seed-cnn"))
    assert variant.name == "cnn-onnx" and variant.steps[0]["exported_with"] == {"exporter": "legacy"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_parity_check_fails_on_a_different_model(mnist_test):
    model = zoo.load("seed-cnn")
    wrong = zoo.build("seed-cnn").eval()  # untrained weights
    parity = check_parity(model, wrong, mnist_test.images[:128])
    assert not parity["passed"]
    assert "max abs diff" in parity["reason"] and "argmax agreement" in parity["reason"]
    assert parity["argmax_agreement"] < 0.5


class _NoOnnxOp(torch.nn.Module):
    """A symmetric eigen-decomposition has no ONNX operator, so every exporter must refuse it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0]
        return torch.linalg.eigvalsh(rows @ rows.transpose(-1, -2))


def test_a_failed_export_names_each_exporter_and_its_reason(tmp_path):
    with pytest.raises(ExportError) as info:
        export_onnx(_NoOnnxOp(), torch.rand(2, 1, 28, 28), tmp_path / "bad.onnx")
    record = info.value.record()
    assert record["exported"] is False and set(record["attempts"]) == {"dynamo", "legacy"}
    assert "eigvalsh" in record["attempts"]["legacy"] and "eigh" in record["attempts"]["dynamo"]
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left where the file would be


def test_unknown_exporter_is_refused(tmp_path):
    with pytest.raises(zoo.SlimlensError, match="unknown ONNX exporter"):
        export_onnx(zoo.load("seed-cnn"), torch.rand(2, 1, 28, 28), tmp_path / "x.onnx", exporter="tflite")


def test_onnx_variant_of_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(zoo.SlimlensError, match="no ONNX file"):
        OnnxVariant("ghost", artifact=tmp_path / "missing.onnx").save(tmp_path)


def test_a_discriminators_agreement_is_judged_where_its_logit_decides():
    from zoo.metrics import decision_threshold, output_parity

    data = data_for("dcgan-d")
    with torch.no_grad():
        logits = zoo.load("dcgan-d")(data.test.images[:500])
    shifted = logits + 0.3  # moves every decision whose logit lies in (-0.3, 0)
    parity = output_parity(logits, shifted, classifier=True, threshold=decision_threshold("discrimination"))
    expected = float(((logits > 0) == (shifted > 0)).float().mean())
    assert parity["argmax_agreement"] == pytest.approx(expected) and expected < 1.0
    check = check_parity(lambda x: zoo.load("dcgan-d")(x), lambda x: zoo.load("dcgan-d")(x) + 0.3, data.test.images[:500],
                         atol=None, min_agreement=0.0, threshold=0.0)
    assert check["argmax_agreement"] == pytest.approx(expected)


def test_the_file_has_the_opset_asked_for_or_the_export_fails(tmp_path, capfd):
    from compress.export import onnx_exporter, written_opset
    from compress.quantize import StaticInt8Config
    from zoo.errors import SlimlensError

    # the dynamo exporter cannot write opset 13 and falls back to its own 18; legacy can, and says why it was used
    path = export_onnx(zoo.load("seed-cnn"), torch.zeros(2, 1, 28, 28), tmp_path / "m.onnx", opset=13)
    assert written_opset(path) == 13
    assert onnx_exporter(path) == {"exporter": "legacy", "dynamo_failed": "wrote opset 18, not the requested 13"}
    assert "Traceback" not in capfd.readouterr().err  # the exporter's own version-conversion traceback stays off the terminal
    with pytest.raises(ExportError, match="dynamo: wrote opset 18, not the requested 13"):
        export_onnx(zoo.load("seed-cnn"), torch.zeros(2, 1, 28, 28), tmp_path / "d.onnx", opset=13, exporter="dynamo")
    for bad in (5, 99):
        with pytest.raises(SlimlensError, match=f"opset={bad} is outside what slimlens can export"):
            StaticInt8Config(opset=bad)
        with pytest.raises(SlimlensError, match=f"opset={bad} is outside"):
            ExportOnnxConfig(opset=bad)


def test_parity_check_fails_outputs_that_are_not_finite():
    model = zoo.load("seed-autoencoder")
    inputs = data_for("seed-autoencoder").example_input(8)

    def broken(x: torch.Tensor) -> torch.Tensor:
        out = model(x).clone()
        out[0, 0, 0, 0] = float("nan")  # NaN > bound is False: an unguarded check would pass this
        return out

    parity = check_parity(model, broken, inputs)
    assert not parity["passed"] and parity["reason"] == f"1 of {2 * 8 * 28 * 28} output values (variant and reference) are NaN or infinite"
    assert parity["max_abs_diff"] is None and parity["not_finite_outputs"] == 1
    from zoo.metrics import output_parity  # results.json's parity against the original: no NaN written there either

    with torch.no_grad():
        recorded = output_parity(model(inputs), broken(inputs), classifier=False)
    assert recorded["max_abs_diff"] is None and recorded["not_finite_outputs"] == 1
    assert not check_parity(broken, model, inputs)["passed"]  # a broken reference does not pass either


def test_a_one_output_layers_bias_is_counted_in_the_onnx_file():
    """A [1]-shaped bias is a weight, not a scalar constant: simplenet's ONNX file has all 7,861 parameters."""
    from zoo.footprint import module_params, onnx_params

    model, data = zoo.load("simplenet"), data_for("simplenet")
    variant = export_onnx_step(model, ExportOnnxConfig(), data)
    assert onnx_params(variant.artifact) == module_params(model) == {"params": 7861, "nonzero_params": module_params(model)["nonzero_params"]}
