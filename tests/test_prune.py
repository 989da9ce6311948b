"""Pruning on real zoo models with real Torch-Pruning, tiny fine-tuning budgets to stay fast."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

import zoo
from compress.context import data_for
from compress.prune import (
    PruneStructuredConfig,
    PruneUnstructuredConfig,
    check_output_shape,
    cubic_sparsity,
    layer_ratios,
    output_layer,
    prunable_weights,
    prune_structured,
    prune_unstructured,
    residual_layers,
)
from compress.quantize.common import output_channel_axis
from compress.sensitivity import SensitivityConfig, fake_quantized, sensitivity
from compress.sparse import CompressedStorageConfig, CompressedVariant, compressed_storage, decode_gaps, encode_gaps
from compress.steps import get_step
from compress.variant import TorchVariant, load_variant
from zoo.errors import SlimlensError
from zoo.footprint import module_macs, module_params


def test_structured_pruning_shrinks_resnet_and_reloads(tmp_path):
    data = data_for("resnet-mnist")
    model = zoo.load("resnet-mnist")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = data.example_input(4)

    pruned = prune_structured(model, PruneStructuredConfig(ratio=0.5, steps=2, epochs=0.02), data)

    assert module_params(pruned)["params"] < 0.4 * module_params(model)["params"]
    assert module_macs(pruned, example) < 0.4 * module_macs(model, example)
    assert pruned.layer1[0].conv1.out_channels < 32
    assert pruned(example).shape == model(example).shape == (4, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the given model is untouched
    variant = TorchVariant(name="pruned", source=data.source, module=pruned)
    reloaded = load_variant(variant.save(tmp_path))
    assert torch.equal(variant(example), reloaded(example))


def test_structured_pruning_fine_tunes_a_cnn_back_to_accuracy():
    data = data_for("seed-cnn")
    pruned = prune_structured(zoo.load("seed-cnn"), PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.3), data)
    assert module_params(pruned)["params"] < 0.5 * module_params(zoo.load("seed-cnn"))["params"]
    assert data.evaluate(pruned)["accuracy"] > 0.94  # measured 0.961; the original scores 0.984


def test_the_output_layer_is_the_last_one_called_not_the_last_defined(head_first):
    data = data_for("tests:HeadFirst", data="mnist")
    example = data.example_input(2)
    model = head_first().train()
    assert output_layer(model, example) is model.head
    assert model.training and all(m.training for m in model.modules())  # the probe leaves the modes as they were
    pruned = prune_structured(model, PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.01), data)
    assert (pruned.body[1].out_features, pruned.head.in_features, pruned.head.out_features) == (32, 32, 10)
    assert pruned(example).shape == (2, 10)


def test_a_pruned_output_that_changes_shape_is_refused(head_first):
    data = data_for("tests:HeadFirst", data="mnist")
    example = data.example_input(2)
    model = head_first()
    tp.prune_linear_out_channels(model.head, idxs=[0, 1])  # what pruning the wrong layer did
    with pytest.raises(SlimlensError, match=r"prune-structured changed the output shape of HeadFirst from \(2, 10\) to \(2, 8\)"):
        check_output_shape(model, example, (2, 10), "prune-structured", "prune it with prune-unstructured instead")


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_round_to_keeps_the_nearest_multiple_and_residual_streams_keep_more():
    data = data_for("resnet-mnist")
    model = zoo.load("resnet-mnist")
    assert residual_layers(model, data.example_input(2), model.head) == {
        model.stem[1], model.layer1[0].conv2, model.layer1[1].conv2,
        model.layer2[0].conv2, model.layer2[0].downsample[0], model.layer2[1].conv2,
        model.layer3[0].conv2, model.layer3[0].downsample[0], model.layer3[1].conv2,
    }
    # 32-64-128 at 0.6 keep 12.8-25.6-51.2 channels: nearest multiples of 8, where Torch-Pruning's own rounding gives 8-24-48
    even = prune_structured(model, PruneStructuredConfig(ratio=0.6, round_to=8, steps=2, epochs=0), data)
    assert _widths(even) == [16] * 5 + [24] * 5 + [48] * 5
    inner = prune_structured(model, PruneStructuredConfig(ratio=0.75, residual_ratio=0.6, round_to=8, steps=1, epochs=0), data)
    assert (inner.layer1[0].conv1.out_channels, inner.layer1[0].conv2.out_channels) == (8, 16)
    assert (inner.layer3[1].conv1.out_channels, inner.layer3[1].conv2.out_channels) == (32, 48)
    assert inner(data.example_input(2)).shape == (2, 10)
    # a gentler ratio than residual_ratio (edge's search tries 0.5) cuts residual streams no harder than the rest
    gentle = layer_ratios(model, 0.5, model.head, round_to=None, residual={model.layer2[0].conv2}, residual_ratio=0.6)
    assert gentle[model.layer2[0].conv2] == gentle[model.layer2[0].conv1] == 0.5
    cnn = zoo.load("seed-cnn")
    assert residual_layers(cnn, data.example_input(2), cnn.head) == set()
    plain = prune_structured(cnn, PruneStructuredConfig(ratio=0.5, residual_ratio=0.1, steps=1, epochs=0), data_for("seed-cnn"))
    assert _widths(plain) == [16, 32, 32]


def test_structured_pruning_removes_lstm_hidden_units(tmp_path):
    data = data_for("seed-lstm")
    pruned = prune_structured(zoo.load("seed-lstm"), PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.3), data)
    assert pruned.lstm.hidden_size == 64 and pruned.head.in_features == 64
    assert data.evaluate(pruned)["accuracy"] > 0.6  # 0.32 before fine-tuning, 0.70 after a third of an epoch
    example = data.example_input(3)
    variant = TorchVariant(name="lstm", source=data.source, module=pruned)
    reloaded = load_variant(variant.save(tmp_path))
    assert torch.equal(variant(example), reloaded(example))


def test_structured_pruning_of_a_model_with_only_an_output_layer_is_refused():
    # softmax-regression's one Linear is its output layer, which is kept whole: nothing is left to remove
    with pytest.raises(SlimlensError, match=r"no channels to remove in softmax-regression.*use prune-unstructured"):
        prune_structured(zoo.load("softmax-regression"), PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.01),
                         data_for("softmax-regression"))


@pytest.mark.parametrize("name", ["simplenet", "seed-autoencoder"])  # binary-classification, reconstruction
def test_unstructured_distillation_applies_beyond_multiclass_classifiers(name):
    data = data_for(name)
    model = zoo.load(name)

    def changed(distill: float) -> float:
        config = PruneUnstructuredConfig(sparsity=0.0, epochs=0.02, distill=distill)
        pruned = prune_unstructured(model, config, data)
        after = pruned.state_dict()
        return max(float((after[key] - value).abs().max()) for key, value in model.state_dict().items())

    # with sparsity 0 the student starts as its teacher: the soft-target loss alone has zero gradient,
    # while the task loss on labels (or pixels) moves the weights
    assert changed(1.0) == 0.0
    assert changed(0.0) > 1e-4


def test_unstructured_pruning_reaches_sparsity():
    data = data_for("lenet5")
    model = zoo.load("lenet5")
    pruned = prune_unstructured(model, PruneUnstructuredConfig(sparsity=0.9, epochs=0.2, prune_every=2), data)
    weights = [getattr(m, name) for m, name in prunable_weights(pruned)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.9, abs=0.002)
    assert not any(hasattr(m, "weight_orig") for m in pruned.modules())  # masks baked in, hooks gone
    assert data.evaluate(pruned)["accuracy"] > 0.9
    assert module_params(model)["nonzero_params"] == module_params(model)["params"]  # the given model is untouched


def test_sparse_storage_shrinks_the_file_and_reloads_exactly(tmp_path):
    data = data_for("lenet5")
    pruned = prune_unstructured(zoo.load("lenet5"), PruneUnstructuredConfig(sparsity=0.9, epochs=0), data)
    variant = compressed_storage(pruned, CompressedStorageConfig(), data)
    variant.name = "sparse"
    dense = TorchVariant(name="dense", source=data.source, module=pruned)
    dense.save(tmp_path)
    reloaded = load_variant(variant.save(tmp_path))
    assert isinstance(reloaded, CompressedVariant) and reloaded.format == "torch"
    assert variant.artifact.stat().st_size < 0.15 * dense.artifact.stat().st_size
    state = reloaded.module.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in pruned.state_dict().items())


def test_relative_indices_round_trip_long_gaps():
    positions = torch.tensor([0, 1, 40, 41, 300, 1000]).numpy()
    for bits in (2, 5, 8):
        assert (decode_gaps(encode_gaps(positions, bits), bits) == positions).all()


def test_layer_sparsity_overrides_global_threshold():
    data = data_for("lenet5")
    config = PruneUnstructuredConfig(sparsity=0.9, epochs=0, layer_sparsity=(("features.1", 0.5),))
    pruned = prune_unstructured(zoo.load("lenet5"), config, data)
    assert float((pruned.features[1].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_layer_sparsity_applies_when_the_global_sparsity_is_zero():
    data = data_for("seed-cnn")
    config = PruneUnstructuredConfig(sparsity=0.0, epochs=0.02, prune_every=1, layer_sparsity=(("head", 0.5), ("features.10", 0.8)))
    pruned = prune_unstructured(zoo.load("seed-cnn"), config, data)
    zero = {name: float((m.weight == 0).float().mean()) for name, m in pruned.named_modules() if hasattr(m, "weight") and m.weight is not None}
    assert zero["head"] == pytest.approx(0.5, abs=0.01) and zero["features.10"] == pytest.approx(0.8, abs=0.01)
    assert zero["features.1"] == 0.0  # the layers without an override keep the global sparsity, 0


def test_cubic_schedule_rises_to_final():
    values = [cubic_sparsity(t, 10, 0.9) for t in range(11)]
    assert values[0] == 0 and values[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_bad_settings_are_refused_with_a_fix():
    with pytest.raises(SlimlensError, match="ratio=1.5"):
        PruneStructuredConfig(ratio=1.5)
    with pytest.raises(SlimlensError, match="choose one"):
        PruneStructuredConfig(round_to=8, global_pruning=True)
    with pytest.raises(SlimlensError, match=r"layer_sparsity names \[.nope.\], not prunable layers of this model; prunable layers: \[.0.\]"):
        prune_unstructured(nn.Sequential(nn.Linear(2, 2)), PruneUnstructuredConfig(layer_sparsity=(("nope", 0.5),)),
                           data_for("lenet5"))
    assert get_step("prune-structured").config_class.strength_field == "ratio"
    nan = float("nan")
    for config, setting in ((PruneStructuredConfig, "steps"), (PruneStructuredConfig, "round_to"),
                            (PruneUnstructuredConfig, "prune_every"), (PruneUnstructuredConfig, "sparsity"),
                            (PruneStructuredConfig, "epochs"), (PruneUnstructuredConfig, "ramp")):
        with pytest.raises(SlimlensError, match=f"{setting}=nan"):
            config(**{setting: nan})
    with pytest.raises(SlimlensError, match="epochs=inf must be 0 .* or a number of epochs up to 10,000"):  # it would never finish
        PruneUnstructuredConfig(epochs=float("inf"))


def test_sensitivity_gives_a_curve_per_layer():
    config = SensitivityConfig(ratios=(0.5, 0.95), bits=(4,), subset=128)
    report = sensitivity(zoo.load("lenet5"), data_for("lenet5"), config)
    layers = report["pruning"]["layers"]
    assert list(layers) == ["features.1.weight", "features.3.weight", "features.6.weight", "head.weight"]
    assert all(len(curve["values"]) == 2 for curve in layers.values())
    assert all(len(curve["values"]) == 1 for curve in report["quantization"]["layers"].values())
    # the 500-weight first convolution suffers more from losing 95% than the 400,000-weight fc1
    assert layers["features.1.weight"]["values"][1] < layers["features.6.weight"]["values"][1]
    assert report["evaluated_on"].startswith("128 of 1000")


def test_fake_quantization_uses_the_requested_levels():
    weight = torch.randn(6, 50)
    assert all(torch.unique(row).numel() <= 2**3 for row in fake_quantized(weight, 3))


def test_fake_quantization_of_a_transposed_convolution_scales_each_output_channel():
    layer = zoo.load("dcgan-g").net[0]  # ConvTranspose2d weight: (in 64, out 128, 7, 7)
    weight = layer.weight.detach()
    axis = output_channel_axis(layer)
    assert axis == 1 and output_channel_axis(zoo.load("seed-cnn").head) == 0
    # what ONNX Runtime and QAT do: one symmetric 4-bit scale per output channel, along axis 1
    scale = weight.abs().amax(dim=(0, 2, 3)) / 7
    reference = torch.fake_quantize_per_channel_affine(weight, scale, torch.zeros(128, dtype=torch.int32), 1, -8, 7)
    assert torch.allclose(fake_quantized(weight, 4, axis), reference, atol=1e-6)
    assert not torch.allclose(fake_quantized(weight, 4), reference, atol=1e-3)  # scales per input channel differ


def test_fine_tuning_augments_only_models_trained_on_augmented_digits():
    """softmax-regression was trained on plain digits: its fine-tunes must not shift and rotate them."""
    from compress.context import data_for
    from compress.finetune import finetune

    plain, augmented = data_for("softmax-regression"), data_for("seed-cnn")
    assert not plain.augment and augmented.augment

    def tuned(augment):
        torch.manual_seed(0)
        return finetune(zoo.load("softmax-regression"), plain, epochs=0.05, augment=augment).state_dict()

    by_default, without, with_it = tuned(None), tuned(False), tuned(True)
    assert all(torch.equal(by_default[k], without[k]) for k in by_default)
    assert not all(torch.equal(by_default[k], with_it[k]) for k in by_default)


def test_a_generator_is_calibrated_on_latents_it_is_not_scored_on():
    from compress.context import data_for
    from zoo.metrics import GAN_EVAL_SAMPLES, GAN_EVAL_SEED

    scored = zoo.latents(GAN_EVAL_SAMPLES, GAN_EVAL_SEED)
    for seed in (0, -1, 5):
        calibration = data_for("dcgan-g", seed=seed).inputs(64)
        assert not any(torch.equal(row, scored[0]) for row in calibration)
        assert not torch.equal(calibration, zoo.latents(64, GAN_EVAL_SEED))


def weight_normed_simplenet() -> torch.nn.Module:
    """simplenet with weight_norm on its hidden layer: a user's builder, for the tests below."""
    from torch.nn.utils.parametrizations import weight_norm

    model = zoo.load("simplenet")
    model.hidden = weight_norm(model.hidden)
    return model


def test_weight_normed_layers_are_probed_pruned_and_reloaded_and_the_callers_model_is_untouched(tmp_path):
    """A parametrized weight is recomputed at every call: writing into it did nothing (the sensitivity probe called
    the layer insensitive) and parametrize's own removal took `weight` away from the model the copy came from."""
    from compress import TorchVariant, load_variant
    from compress.context import data_for
    from compress.prune import PruneUnstructuredConfig, prune_unstructured
    from compress.sensitivity import SensitivityConfig, sensitivity

    data = data_for("tests.test_prune:weight_normed_simplenet", data="mnist-ge5")
    model, x = weight_normed_simplenet(), data.inputs(16, split="test")
    before = model(x)
    config = SensitivityConfig(ratios=(0.9,), bits=(2,), subset=256)
    probed = sensitivity(model, data, config)["pruning"]["layers"]
    plain = sensitivity(zoo.load("simplenet"), data, config)["pruning"]["layers"]
    assert probed["hidden.weight"]["values"] == plain["hidden.weight"]["values"]
    assert probed["hidden.weight"]["values"][0] < 0.8  # 90% of the hidden layer gone costs accuracy (0.96 before)
    pruned = prune_unstructured(model, PruneUnstructuredConfig(sparsity=0.9, epochs=0.05), data)
    assert float((pruned.hidden.weight == 0).float().mean()) >= 0.85
    assert torch.equal(model(x), before)  # the caller's model still has its weight_norm and its outputs
    meta = TorchVariant("wn", source=data.source, module=pruned).save(tmp_path)
    assert torch.equal(load_variant(meta, trust_code=True)(x), TorchVariant("p", module=pruned)(x))


class RowConv1d(torch.nn.Module):
    """A user's 1-D CNN reading each digit as 28 rows of 28 pixels: Conv1d, BatchNorm1d, Conv1d, then a linear head."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv1d(28, 32, 3, padding=1), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                        torch.nn.Conv1d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1))
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x.flatten(1, 2)).flatten(1))


def test_structured_pruning_removes_conv1d_channels_and_the_variant_reloads(tmp_path):
    from compress import TorchVariant, load_variant
    from compress.context import data_for
    from compress.prune import PruneStructuredConfig, prune_structured

    torch.manual_seed(0)
    model, data = RowConv1d().eval(), data_for("tests.test_prune:RowConv1d", data="mnist")
    pruned = prune_structured(model, PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.0), data)
    assert pruned.body[0].out_channels == pruned.body[1].num_features == pruned.body[3].in_channels == 16
    assert pruned.body[3].out_channels == pruned.head.in_features == 16 and pruned.head.out_features == 10
    x = data.inputs(8, split="test")
    meta = TorchVariant("narrow", source=data.source, module=pruned).save(tmp_path)
    again = load_variant(meta, trust_code=True)
    assert again.module.body[0].out_channels == 16 and torch.equal(again(x), TorchVariant("p", module=pruned)(x))


def test_the_older_hook_based_weight_norm_is_baked_in_too():
    """torch.nn.utils.weight_norm (deprecated, still common) recomputes `weight` in a forward pre-hook."""
    import warnings

    from compress.variant import plain_weights

    model = zoo.load("simplenet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        torch.nn.utils.weight_norm(model.hidden)
    x = torch.rand(4, 1, 28, 28)
    before = model(x)
    baked = plain_weights(model)
    assert not baked.hidden._forward_pre_hooks and "weight_g" not in dict(baked.hidden.named_parameters())
    assert torch.allclose(baked(x), before, atol=1e-6)


class Separable(torch.nn.Module):
    """A user's MobileNet-style CNN: depthwise (groups = channels) and pointwise convolutions."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def test_a_pruned_depthwise_convolution_reloads_with_its_groups(tmp_path):
    """QA: a pruned MobileNet-style variant saved fine but could not be loaded again: groups stayed 16 beside 8 channels."""
    from compress.prune import PruneStructuredConfig, prune_structured

    torch.manual_seed(0)
    model, data = Separable().eval(), data_for("tests.test_prune:Separable", data="mnist")
    pruned = prune_structured(model, PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.0), data)
    assert [pruned.body[i].groups for i in (3, 9)] == [8, 16] and pruned.body[9].in_channels == pruned.body[9].out_channels == 16
    x = data.inputs(8, split="test")
    meta = TorchVariant("narrow", source=data.source, module=pruned).save(tmp_path)
    again = load_variant(meta, trust_code=True)
    assert [again.module.body[i].groups for i in (3, 9)] == [8, 16]
    assert torch.equal(again(x), TorchVariant("p", module=pruned)(x))


class GroupedFromInput(torch.nn.Module):
    """A grouped (not depthwise) conv on the digit repeated to 4 channels: Torch-Pruning can cut only its outputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.body = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(self.conv(x.repeat(1, 4, 1, 1))).flatten(1))


def test_groups_are_read_from_the_metadata_and_guessed_only_for_older_files(tmp_path):
    """Review: a grouped conv that lost only output channels (weight (4, 2, 3, 3), groups 2) looks like one that lost
    whole groups, and was reloaded as groups=1; variants now record their groups, older metadata is still read."""
    import json

    torch.manual_seed(0)
    data = data_for("tests.test_prune:GroupedFromInput", data="mnist")
    pruned = prune_structured(GroupedFromInput().eval(), PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.0), data)
    assert pruned.conv.groups == 2 and tuple(pruned.conv.weight.shape) == (4, 2, 3, 3)
    x = data.inputs(4, split="test")
    meta = TorchVariant("narrow", source=data.source, module=pruned).save(tmp_path)
    again = load_variant(meta, trust_code=True)
    assert again.module.conv.groups == 2 and torch.equal(again(x), TorchVariant("p", module=pruned)(x))
    separable = prune_structured(Separable().eval(), PruneStructuredConfig(ratio=0.5, steps=1, epochs=0.0),
                                 data_for("tests.test_prune:Separable", data="mnist"))
    older = TorchVariant("older", source={"builder": "tests.test_prune:Separable"}, module=separable).save(tmp_path)
    recorded = json.loads(older.read_text())
    del recorded["groups"]  # as written before groups were recorded: a depthwise conv's are guessed from its weight
    older.write_text(json.dumps(recorded))
    assert [load_variant(older, trust_code=True).module.body[i].groups for i in (3, 9)] == [8, 16]
