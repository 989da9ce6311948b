"""Quantization steps on real zoo models and real ONNX Runtime sessions: size, accuracy, reload, bad input."""

from __future__ import annotations

import pytest
import torch

import zoo
from compress import TorchVariant, load_variant
from compress.context import data_for
from compress.quantize import (
    DynamicInt8Config,
    HalfPrecisionConfig,
    OrtDynamicInt8Config,
    QuantizationError,
    StaticInt8Config,
    half_precision,
    quantize_dynamic,
    quantize_dynamic_onnx,
    quantize_static_onnx,
)
from compress.steps import list_steps


def _size(variant, folder) -> int:
    variant.save(folder)
    return variant.artifact.stat().st_size


@pytest.fixture(scope="module")
def lstm():
    return zoo.load("seed-lstm"), data_for("seed-lstm")


@pytest.fixture(scope="module")
def cnn():
    model = zoo.load("seed-cnn")
    data = data_for("seed-cnn")
    return model, data, data.evaluate(model)


def test_steps_are_registered():
    assert {"quantize_dynamic", "quantize_dynamic_onnx", "quantize_static_onnx", "half_precision"} <= set(list_steps())


def test_torch_dynamic_int8_lstm_is_smaller_accurate_and_reloads_exactly(lstm, tmp_path):
    model, data = lstm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    variant = quantize_dynamic(model, DynamicInt8Config(), data)
    float_bytes = _size(TorchVariant("fp32", source=data.source, module=model), tmp_path / "fp32")
    assert float_bytes / _size(variant, tmp_path / "int8") >= 3.5
    drop = data.metric_drop(data.evaluate(model), data.evaluate(variant))
    assert drop <= 0.005  # half a point on 1,000 test digits
    loaded = load_variant(tmp_path / "int8" / f"{variant.name}.variant.json")
    x = data.example_input(16)
    assert torch.equal(loaded(x), variant(x))
    with torch.no_grad():  # the float stand-in (dequantized weights) computes nearly the same function
        assert (loaded.stand_in(x) - variant(x)).abs().max() < 0.05 * variant(x).abs().max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_onnx_dynamic_int8_lstm_quantizes_the_lstm_op(lstm, tmp_path):
    import onnx

    model, data = lstm
    variant = quantize_dynamic_onnx(model, OrtDynamicInt8Config(), data)
    ops = {node.op_type for node in onnx.load(str(variant.artifact)).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "MatMulInteger" in ops
    float_bytes = _size(TorchVariant("fp32", source=data.source, module=model), tmp_path)
    assert float_bytes / variant.artifact.stat().st_size >= 3.5
    assert data.metric_drop(data.evaluate(model), data.evaluate(variant)) <= 0.005
    loaded = load_variant(variant.save(tmp_path))
    assert torch.equal(loaded(data.example_input(4)), variant(data.example_input(4)))
    # the float model it was quantized from comes back with it, for gradient explanations
    assert torch.equal(loaded.stand_in(data.example_input(4)), model(data.example_input(4)))


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_int8_cnn_stays_within_a_point(cnn, calibration):
    model, data, base = cnn
    variant = quantize_static_onnx(model, StaticInt8Config(calibration=calibration, samples=64), data)
    assert variant.steps[0]["calibration"] == calibration and variant.steps[0]["calibration_inputs"] == 64
    assert data.metric_drop(base, data.evaluate(variant)) <= 0.012
    assert variant.artifact.stat().st_size * 3 < zoo.card("seed-cnn").weights["bytes"]  # int8 weights: ~4x smaller


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_halves_the_file_and_keeps_accuracy(cnn, dtype, tmp_path):
    model, data, base = cnn
    variant = half_precision(model, HalfPrecisionConfig(dtype=dtype), data)
    assert variant.name == dtype
    x = data.example_input(8)
    assert variant(x).dtype == torch.float32
    assert _size(variant, tmp_path) < 0.55 * zoo.card("seed-cnn").weights["bytes"]
    assert data.metric_drop(base, data.evaluate(variant)) <= 0.003
    loaded = load_variant(tmp_path / f"{dtype}.variant.json")
    assert next(loaded.module.parameters()).dtype == getattr(torch, dtype)
    assert torch.equal(loaded(x), variant(x))


def test_static_int8_of_an_lstm_says_what_to_use_instead():
    with pytest.raises(QuantizationError, match=r"seed-lstm: .*its LSTM layer .lstm. would stay in float; use quantize_dynamic"):
        quantize_static_onnx(zoo.build("seed-lstm"), StaticInt8Config(), data_for("seed-lstm"))


def test_dynamic_int8_of_a_generator_without_linear_layers_is_refused():
    with pytest.raises(QuantizationError, match=r"family gan.*quantize_static_onnx"):
        quantize_dynamic(zoo.build("dcgan-g"), DynamicInt8Config(), data_for("dcgan-g"))


def test_steps_called_directly_leave_no_temporary_files(cnn, tmp_path, monkeypatch):
    import gc
    import tempfile

    model, data, _ = cnn
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(QuantizationError, match="found no MatMul/Gemm/LSTM"):  # a failed step removes its folder at once
        quantize_dynamic_onnx(zoo.build("dcgan-g"), OrtDynamicInt8Config(), data_for("dcgan-g"))
    assert list(tmp_path.iterdir()) == []
    variant = quantize_static_onnx(model, StaticInt8Config(samples=8), data)
    saved = variant.save(tmp_path / "kept")
    assert variant.artifact.parent == tmp_path / "kept" and len(list(tmp_path.iterdir())) == 2  # kept/ and the step's folder
    del variant
    gc.collect()
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]
    assert load_variant(saved)(data.example_input(2)).shape == (2, 10)


@pytest.mark.parametrize("settings, message", [
    ({"samples": 0}, "needs calibration inputs"),
    ({"calibration": "kl"}, "unknown calibration method"),
    ({"percentile": 12.0}, "percentile"),
    ({"activations": "int4"}, "activations"),
    ({"activations": "int8", "weights": "uint8"}, "not a pair ONNX Runtime quantizes"),
])
def test_bad_static_settings_are_refused(settings, message):
    with pytest.raises(QuantizationError, match=message):
        StaticInt8Config(**settings)


def test_bad_dynamic_and_half_settings_are_refused():
    with pytest.raises(QuantizationError, match="conv"):
        DynamicInt8Config(layers=("conv",))
    with pytest.raises(QuantizationError, match="float8"):
        HalfPrecisionConfig(dtype="float8")


def test_qat_yields_an_int8_onnx_file_within_a_point(cnn):
    import onnx

    from compress.quantize import QatConfig, quantization_aware_training

    model, data, base = cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    variant = quantization_aware_training(model, QatConfig(epochs=0.1, samples=32), data)
    weights = [i for i in onnx.load(str(variant.artifact)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 5  # every conv and linear weight is stored as int8
    assert variant.steps[0]["step"] == "qat" and variant.steps[0]["deployed_as"]["step"] == "quantize_static_onnx"
    assert variant.steps[0]["learned_input_ranges"] == "5 of 5 layers"
    assert data.metric_drop(base, data.evaluate(variant)) <= 0.01
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert variant.stand_in is not None and data.evaluate(variant.stand_in)["accuracy"] >= base["accuracy"] - 0.01


def test_qat_deploys_the_ranges_it_learned():
    import onnx
    from onnx import numpy_helper

    from compress.quantize import QatConfig, quantization_aware_training

    data = data_for("resnet-mnist")  # BatchNorm folded, and a block input read by both conv1 and the downsample
    variant = quantization_aware_training(zoo.load("resnet-mnist"), QatConfig(epochs=0.05, samples=16), data)
    assert variant.steps[0]["learned_input_ranges"] == "16 of 16 layers"
    graph = onnx.load(str(variant.artifact)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = {float(arrays[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear" and n.input[1] in arrays}
    # the first conv reads normalised pixels: its learned range is fixed by the data, (1 - mean) / std - (-mean / std) = 1 / std
    assert any(abs(s - (1 / 0.3081) / 255) < 1e-3 for s in scales)
    # the int8 file computes what the fake-quantized model trained to compute
    assert abs(data.evaluate(variant)["accuracy"] - data.evaluate(variant.stand_in)["accuracy"]) <= 0.005


def test_qat_folds_batchnorm_into_a_transposed_convolution_as_onnx_runtime_will():
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from compress.quantize import QatConfig, quantization_aware_training

    # dcgan-g's BatchNorms follow ConvTranspose2d, which torch.fx's fuse() does not fold; ONNX Runtime does
    variant = quantization_aware_training(zoo.load("dcgan-g"), QatConfig(epochs=0.02, samples=16), data_for("dcgan-g"))
    assert variant.steps[0]["learned_input_ranges"] == "3 of 3 layers"
    arrays = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(variant.artifact)).graph.initializer}
    trained = [m.weight.detach().numpy() for m in variant.stand_in.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    deployed = [arrays[name].astype(np.float32) * arrays[name.replace("_quantized", "_scale")].reshape(1, -1, 1, 1)
                for name in sorted(arrays) if name.endswith("weight_quantized")]
    assert len(trained) == len(deployed) == 3
    for weight in trained:  # each deployed int8 weight is exactly the weight QAT trained on its grid
        assert any(w.shape == weight.shape and np.abs(w - weight).max() < 1e-6 for w in deployed)


class _LstmClassifier(torch.nn.Module):
    """A user's model (family custom) whose main layer is an LSTM."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(28, 32, batch_first=True)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x[:, 0])[0][:, -1])


class _BranchesOnData(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return out if out.sum() > 0 else -out  # torch.export cannot capture a branch on the data


def test_static_int8_of_a_custom_model_with_an_lstm_is_refused_not_mislabelled():
    from compress.quantize import QatConfig, quantization_aware_training

    data = data_for("tests:_LstmClassifier", data="mnist")
    with pytest.raises(QuantizationError, match=r"LSTM layer 'rnn' would stay in float; use quantize_dynamic"):
        quantize_static_onnx(_LstmClassifier().eval(), StaticInt8Config(samples=8), data)
    with pytest.raises(QuantizationError, match=r"LSTM layer 'rnn' would stay in float"):
        quantization_aware_training(_LstmClassifier().eval(), QatConfig(samples=8), data)


def test_a_custom_lstm_is_refused_before_the_steps_ahead_of_static_int8_run(tmp_path):
    from compress import run
    from zoo.errors import SlimlensError

    said: list[str] = []
    recipe = [{"step": "prune-unstructured", "sparsity": 0.5, "epochs": 0}, {"step": "quantize_static_onnx", "samples": 8}]
    # a user's model holding an LSTM is compressed as family lstm, which static int8 does not apply to
    with pytest.raises(SlimlensError, match=r"step 2 \(quantize_static_onnx\) does not apply to tests:_LstmClassifier "
                                            r"\(family lstm, as it holds a recurrent layer\): .*mark it optional = true"):
        run(_LstmClassifier().eval(), recipe, data_for("tests:_LstmClassifier", data="mnist"), out_dir=tmp_path / "run",
            progress=said.append)
    assert not any("prune-unstructured" in m for m in said) and not (tmp_path / "run").exists()


def test_qat_leaves_a_grouped_transposed_convolution_and_its_batchnorm_apart():
    from compress.quantize.qat import _fold_batchnorm

    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 4, 3, groups=2), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.uniform_()
    x = torch.rand(2, 4, 5, 5)
    folded = _fold_batchnorm(model)  # fuse_conv_bn_eval assumes one group: folding would give a wrong-shaped weight
    assert torch.allclose(folded(x), model(x), atol=1e-6)


def test_pt2e_of_a_model_torch_export_cannot_capture_is_one_line():
    from compress.quantize import Pt2eInt8Config, quantize_pt2e

    # no route is recommended: the traced ONNX export would freeze one branch and be wrong on other inputs
    with pytest.raises(QuantizationError, match=r"PT2E could not capture or quantize .*torch.export needs a forward without") as raised:
        quantize_pt2e(_BranchesOnData().eval(), Pt2eInt8Config(samples=2, compile=False), data_for("tests:_BranchesOnData", data="mnist"))
    assert "\n" not in str(raised.value)


def test_qat_of_an_lstm_is_refused():
    from compress.quantize import QatConfig, quantization_aware_training

    with pytest.raises(QuantizationError, match=r"QAT does not apply to seed-lstm: .*its LSTM layer 'lstm' would stay in float"):
        quantization_aware_training(zoo.build("seed-lstm"), QatConfig(), data_for("seed-lstm"))


def test_pt2e_int8_cnn_is_accurate_smaller_and_reloads(cnn, tmp_path):
    from compress.quantize import Pt2eInt8Config, quantize_pt2e

    model, data, base = cnn
    variant = quantize_pt2e(model, Pt2eInt8Config(samples=32, compile=False), data)  # compiling is timed in the benchmark
    assert variant.steps[0]["quantized_layers"] == 5  # three convolutions and two linear layers
    assert data.metric_drop(base, data.evaluate(variant)) <= 0.01
    assert _size(variant, tmp_path) < 0.6 * zoo.card("seed-cnn").weights["bytes"]  # int8 weights, not float copies
    loaded = load_variant(tmp_path / f"{variant.name}.variant.json")
    x = data.example_input(8)
    assert torch.equal(loaded(x), variant(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{variant.name}.pt2", f"{variant.name}.variant.json"]  # no partial file


def test_pt2e_int8_quantizes_a_resnet_whose_blocks_call_one_relu_twice():
    from compress.quantize import Pt2eInt8Config, quantize_pt2e

    # torchvision's BasicBlock reuses self.relu; without splitting its calls the quantizer fails to annotate
    data = data_for("resnet-mnist")
    variant = quantize_pt2e(zoo.load("resnet-mnist"), Pt2eInt8Config(samples=16, compile=False), data)
    int8_weights = [n for n in variant.program.graph.nodes if "dequantize_per_channel" in str(n.target)]
    assert len(int8_weights) == 16  # all 15 convolutions and the head carry int8 weights
    assert variant.steps[0]["quantized_layers"] == 16
    x = data.example_input(64)
    agreement = (variant(x).argmax(1) == zoo.load("resnet-mnist")(x).argmax(1)).float().mean()
    assert agreement >= 0.95


def test_pt2e_int8_of_a_generator_it_cannot_quantize_is_refused():
    from compress.quantize import Pt2eInt8Config, quantize_pt2e

    # X86InductorQuantizer has no ConvTranspose2d pattern: dcgan-g would come back all float under an int8 name
    with pytest.raises(QuantizationError, match=r"quantized no layer of dcgan-g \(family gan\).*use quantize_static_onnx"):
        quantize_pt2e(zoo.build("dcgan-g"), Pt2eInt8Config(samples=2, compile=False), data_for("dcgan-g"))


def test_static_int8_generator_stays_faithful_to_the_original():
    generator, data = zoo.load("dcgan-g"), data_for("dcgan-g")
    variant = quantize_static_onnx(generator, StaticInt8Config(samples=64), data)
    metrics = data.evaluate(variant, reference=generator)
    assert metrics["fidelity"] < 1e-3  # mean squared pixel difference to the float generator on fixed latents
    assert metrics["confident_fraction"] >= data.evaluate(generator)["confident_fraction"] - 0.03
    assert variant.artifact.stat().st_size * 3.5 < zoo.card("dcgan-g").weights["bytes"]
    with pytest.raises(QuantizationError, match="use quantize_static_onnx"):  # no MatMul/LSTM for dynamic int8
        quantize_dynamic_onnx(generator, OrtDynamicInt8Config(), data)


@pytest.fixture(scope="module")
def pt2e_run(tmp_path_factory):
    """seed-cnn through ``compress.run`` with eager PT2E int8: the results entry and the saved variant."""
    from compress import run

    recipe = [{"step": "quantize_pt2e", "samples": 8, "compile": False}]
    return run("seed-cnn", recipe, out_dir=tmp_path_factory.mktemp("pt2e") / "run", export=False)


def test_pt2e_int8_results_count_the_float_model(pt2e_run):
    original, int8 = pt2e_run.results["variants"]
    assert int8["name"] == "int8-pt2e"
    # the int8 program's own parameters are only its float biases (234); int8 changes bits, not counts
    counts = ("params", "nonzero_params", "macs")
    assert [int8[k] for k in counts] == [original[k] for k in counts]
    assert original["params"] == 93_322


def test_pt2e_int8_variant_loads_in_a_fresh_process(pt2e_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    x = data_for("seed-cnn").example_input(8)  # eight test digits
    torch.save(x, tmp_path / "x.pt")
    meta = pt2e_run.out_dir / "variants" / "int8-pt2e.variant.json"
    # a new interpreter has not imported torchao, so nothing has registered the quantized_decomposed ops yet
    code = ("import sys, torch; from compress import load_variant; "
            "torch.save(load_variant(sys.argv[1])(torch.load(sys.argv[2])), sys.argv[3])")
    done = subprocess.run([sys.executable, "-c", code, str(meta), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, timeout=300, cwd=Path(zoo.__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "y.pt"), pt2e_run.variant("int8-pt2e")(x))


def _tampered_pt2e(run_dir, folder, edit, append=False):
    """A copy of a saved int8-pt2e variant with .pt2 entries rewritten by ``edit(name, data)``, its sha256 updated to match.

    ``append``: the original entries are written again after the edited ones, as second copies.
    """
    import hashlib
    import json
    import zipfile

    meta = json.loads((run_dir / "variants" / "int8-pt2e.variant.json").read_text())
    folder.mkdir()
    source, forged = run_dir / "variants" / meta["artifact"], folder / meta["artifact"]
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(forged, "w") as dst:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]  # writestr alters the ZipInfo it is given
        for name, data in entries:
            dst.writestr(name, edit(name, data))
        for name, data in entries if append else []:
            dst.writestr(name, data)
    meta["sha256"] = hashlib.sha256(forged.read_bytes()).hexdigest()
    (folder / "int8-pt2e.variant.json").write_text(json.dumps(meta))
    return folder / "int8-pt2e.variant.json"


class _CreatesFile:
    """Unpickles by calling open(path, "w"): proof that loading ran code from the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("entry", ["sample_inputs", "weight"])
def test_pt2e_archive_that_would_unpickle_code_is_refused(pt2e_run, tmp_path, entry):
    import pickle

    from compress import VariantError

    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_CreatesFile(marker))

    def edit(name, data):
        if entry == "sample_inputs" and name.endswith("data/sample_inputs/model.pt"):
            return payload  # torch.export.load retries a weights-only failure here with full unpickling
        if entry == "weight" and name.endswith("data/weights/weight_0"):
            return payload
        if entry == "weight" and name.endswith("model_weights_config.json"):  # marks weight_0 as a pickled tensor
            return data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
        return data

    meta = _tampered_pt2e(pt2e_run.out_dir, tmp_path / "forged", edit)
    with pytest.raises(VariantError, match="which torch.export.load would unpickle"):
        load_variant(meta)
    assert not marker.exists()


def test_pt2e_archive_with_a_clean_second_copy_of_its_config_is_refused(pt2e_run, tmp_path):
    import pickle
    import warnings

    from compress import VariantError

    marker = tmp_path / "code-ran"

    def edit(name, data):  # first copies: what torch's reader takes; the clean second copies are what zipfile reads
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(_CreatesFile(marker))
        if name.endswith("model_weights_config.json"):
            return data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
        return data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names it is asked to write
        meta = _tampered_pt2e(pt2e_run.out_dir, tmp_path / "forged", edit, append=True)
    with pytest.raises(VariantError, match="twice"):
        load_variant(meta)
    assert not marker.exists()


def test_pt2e_program_that_fails_to_load_says_why_in_one_line(pt2e_run, tmp_path, capfd):
    from compress import VariantError

    def edit(name, data):  # an operator this torch does not have, as in a file from another version
        if name.endswith("models/model.json"):
            return data.replace(b"dequantize_per_channel", b"dequantize_per_channel_v9")
        return data

    meta = _tampered_pt2e(pt2e_run.out_dir, tmp_path / "other-torch", edit)
    reason = r"cannot be loaded as a PT2E int8 program \(SerializeError: We failed to resolve .*dequantize_per_channel_v9"
    with pytest.raises(VariantError, match=reason) as caught:
        load_variant(meta)
    assert "\n" not in str(caught.value)
    assert "Traceback" not in capfd.readouterr().err  # torch.export.load logs pages of it before raising


@pytest.mark.parametrize("per_channel", [True, False])
def test_pruned_zeros_are_counted_in_int8_onnx_with_uint8_weights(per_channel):
    """A uint8 weight's zero is its zero point (128 for symmetric weights), so a pruned model keeps its sparsity on record."""
    from torch.nn.utils import prune

    from compress.quantize import StaticInt8Config, quantize_static_onnx
    from zoo.footprint import module_params, onnx_params

    model = zoo.load("lenet5")
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            prune.l1_unstructured(layer, "weight", 0.8)
            prune.remove(layer, "weight")
    int8 = quantize_static_onnx(model, StaticInt8Config(samples=8, weights="uint8", per_channel=per_channel), data_for("lenet5"))
    assert onnx_params(int8.artifact) == module_params(model)  # biases stay float, so every zero survives


class GroupNormNet(torch.nn.Module):
    """A user's CNN normalised by GroupNorm, whose 1-D scale ONNX Runtime's per-channel quantizer warns about."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_the_quantizers_log_lines_go_into_the_step_record_not_onto_the_terminal(capfd, monkeypatch):
    """QA: `WARNING:root:Axis 1 is out-of-range for weight 'val_9' with rank 1` was printed even under --quiet."""
    import logging

    torch.manual_seed(0)
    root = logging.getLogger()
    # as outside pytest, whose own handlers on the root logger keep logging.warning from installing a stderr one
    monkeypatch.setattr(root, "handlers", [])
    variant = quantize_static_onnx(GroupNormNet().eval(), StaticInt8Config(samples=8), data_for("test_quantize:GroupNormNet", data="mnist"))
    assert "out-of-range" not in capfd.readouterr().err and root.handlers == []  # nothing printed, no handler left behind
    assert any(note.startswith("warning from root: Axis 1 is out-of-range") for note in variant.steps[0]["quantizer_warnings"])


class TinyNet(torch.nn.Module):
    """A user's 110-parameter CNN: its ONNX file is mostly graph, which static int8 grows with Q/DQ nodes and scales."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_a_quantized_file_larger_than_its_float_file_is_warned_about(tmp_path):
    """QA: edge's int8 file of a small MobileNet was 20,375 bytes against its float file's 19,167, without a word."""
    from compress import run

    torch.manual_seed(0)
    said: list[str] = []
    results = run(TinyNet().eval(), [{"step": "quantize_static_onnx", "samples": 8}], data_for("test_quantize:TinyNet", data="mnist"),
                  out_dir=tmp_path / "run", progress=said.append).results
    sizes = {v["name"]: v["size_bytes"] for v in results["variants"]}
    assert sizes["int8-static-onnx"] > sizes["original-onnx"]
    (warning,) = results["timings"]["steps"][0]["warnings"]
    assert f"{sizes['int8-static-onnx']:,} bytes, more than the {sizes['original-onnx']:,} of original-onnx" in warning
    assert f"warning: quantize_static_onnx: {warning}" in said
