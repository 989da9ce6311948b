"""explain.attribute / explainer: Captum underneath, what a method runs on, batching, heatmap files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerGradCam, Lime, NoiseTunnel, Occlusion, Saliency
from PIL import Image

import explain
import zoo
from explain import heatmaps
from explain.defaults import default_options


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = zoo.dataset("mnist", "test")
    idx = list(range(0, 1000, 125))  # 8 images spread over the shuffled test split
    return data.images[idx], data.labels[idx]


def test_attribute_equals_captum_called_directly(cnn, digits):
    x, y = digits
    ours = explain.attribute(cnn, x, target=y, method="integrated_gradients")
    direct = IntegratedGradients(cnn).attribute(x, target=y)
    assert torch.equal(ours, direct)
    # target=None means the predicted class
    predicted = cnn(x).argmax(1)
    assert torch.equal(explain.attribute(cnn, x, method="saliency"), Saliency(cnn).attribute(x, target=predicted))


def test_options_go_straight_to_captum(cnn, digits):
    x, y = digits
    settings = {"sliding_window_shapes": (1, 7, 7), "strides": (1, 7, 7), "baselines": 0.1, "perturbations_per_eval": 16}
    ours = explain.attribute(cnn, x[:2], y[:2], "occlusion", **settings)
    direct = Occlusion(cnn).attribute(x[:2], target=y[:2], **settings)
    assert torch.equal(ours, direct)
    attributions, delta = explain.attribute(cnn, x[:2], y[:2], return_convergence_delta=True, n_steps=20)
    assert attributions.shape == x[:2].shape and delta.shape == (2,)


def test_explainer_returns_the_captum_object(cnn):
    assert isinstance(explain.explainer(cnn, "integrated_gradients"), IntegratedGradients)
    cam = explain.explainer(cnn, "gradcam")
    assert isinstance(cam, LayerGradCam) and cam.layer is cnn.features[7]  # the last convolution
    assert isinstance(explain.explainer(cnn, "lime"), Lime)
    smooth = explain.explainer(cnn, "smoothgrad")
    assert isinstance(smooth, NoiseTunnel) and isinstance(smooth.attribution_method, Saliency)


@pytest.mark.parametrize("method", [m for m in explain.available_methods() if not m.startswith("noise_tunnel:") or m.endswith(("saliency", "guided_backprop"))])
def test_every_method_gives_a_map_shaped_like_the_input(cnn, digits, method):
    x, y = digits[0][:2], digits[1][:2]
    options = default_options(method)
    if method in ("lime", "kernel_shap"):
        options["n_samples"] = 60
    maps = explain.attribute(cnn, x, y, method, **options)
    assert maps.shape == x.shape and torch.isfinite(maps).all() and maps.abs().sum() > 0


def test_internal_batching_matches_one_call(cnn, digits):
    x, y = digits
    whole = explain.attribute(cnn, x, y, "integrated_gradients", batch_size=None, n_steps=16, baselines=torch.zeros_like(x))
    chunked = explain.attribute(cnn, x, y, "integrated_gradients", batch_size=3, n_steps=16, baselines=torch.zeros_like(x))
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_model_modes_are_left_as_they_were(digits):
    model = zoo.load("seed-cnn").train()
    explain.attribute(model, digits[0][:2], method="saliency")
    assert all(m.training for m in model.modules())


def test_unknown_and_inapplicable_methods_raise_slimlens_errors(cnn, digits):
    with pytest.raises(explain.UnknownMethodError, match="unknown method 'gradcamm'"):
        explain.attribute(cnn, digits[0][:1], method="gradcamm")
    with pytest.raises(explain.MethodNotApplicableError, match="no convolution|has none"):
        explain.attribute(zoo.load("softmax-regression"), digits[0][:1], method="gradcam")
    assert issubclass(explain.ExplainError, zoo.SlimlensError)


def test_forward_function_without_gradients(cnn, digits):
    x, y = digits[0][:2], digits[1][:2]

    def deployed(batch: torch.Tensor) -> torch.Tensor:  # like an ONNX Runtime session: numpy in, numpy out
        with torch.no_grad():
            return torch.from_numpy(cnn(torch.from_numpy(batch.detach().numpy())).numpy())

    settings = {"sliding_window_shapes": (1, 7, 7), "strides": (1, 7, 7), "perturbations_per_eval": 16}
    assert torch.allclose(explain.attribute(deployed, x, y, "occlusion", **settings), explain.attribute(cnn, x, y, "occlusion", **settings), atol=1e-5)
    with pytest.raises(explain.GradientsUnavailableError, match="gradient-free method"):
        explain.attribute(deployed, x, y, "integrated_gradients")


class _Deployed:
    """A duck-typed variant: callable without gradients, with a float stand-in."""

    name, format = "int8-test", "torch"

    def __init__(self, stand_in: torch.nn.Module):
        self.stand_in = stand_in

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.stand_in(batch)


def test_gradient_methods_use_the_stand_in_and_say_so(cnn, digits):
    x, y = digits[0][:2], digits[1][:2]
    with pytest.warns(explain.StandInWarning, match="stand-in of variant int8-test"):
        maps = explain.attribute(_Deployed(cnn), x, y, "saliency")
    assert torch.equal(maps, explain.attribute(cnn, x, y, "saliency"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", explain.StandInWarning)  # gradient-free: runs on the variant itself, no notice
        explain.attribute(_Deployed(cnn), x, y, "feature_ablation", **default_options("feature_ablation"))


def test_heatmap_and_grid_pngs(cnn, digits, tmp_path):
    x, y = digits[0][:3], digits[1][:3]
    maps = {m: explain.attribute(cnn, x, y, m, **default_options(m)) for m in ("integrated_gradients", "gradcam")}
    single = heatmaps.save_png(explain.heatmap(x[0], maps["gradcam"][0], title="gradcam"), tmp_path / "one.png")
    with Image.open(single) as img:
        assert img.format == "PNG" and img.size == (360, 300)
        assert np.asarray(img.convert("L")).std() > 10  # not a blank canvas
    shared = heatmaps.save_png(heatmaps.grid(x, maps, row_labels=["a", "b", "c"], shared_scale=True), tmp_path / "grid.png")
    with Image.open(shared) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 3 * 100
    assert not list(tmp_path.glob(".*.tmp"))  # written via a temporary name and renamed


def test_kernel_shap_surrogate_keeps_shapley_efficiency(cnn, digits):
    # Shapley values add up to F(x) - F(baseline); KernelShap's huge weights on the empty and full
    # coalitions enforce it, which only a well-conditioned surrogate solve preserves.
    x, y = digits[0][:1], digits[1][:1]
    torch.manual_seed(0)
    maps = explain.attribute(cnn, x, y, "kernel_shap", **{**default_options("kernel_shap"), "n_samples": 120})
    with torch.no_grad():
        gap = float(cnn(x)[0, y] - cnn(torch.zeros_like(x))[0, y])
    patches = maps.reshape(7, 4, 7, 4)[:, 0, :, 0]  # one value per 4x4 feature group
    assert patches.unique().numel() > 10
    assert abs(float(patches.sum()) - gap) < 0.02 * abs(gap)


def test_grid_labels_are_shortened_to_fit_their_row():
    from explain.heatmaps import ROW_LABEL_CHARS, _fit_row_label

    label = _fit_row_label("a_very_long_file_name_of_a_digit_photo_taken_by_phone.png\ntrue ? · pred 3 (0.91)")
    assert all(len(line) <= ROW_LABEL_CHARS for line in label.splitlines())
    assert label.splitlines()[0].startswith("a_very_lon") and label.splitlines()[0].endswith("phone.png") and "…" in label


class _FunctionalRelu(torch.nn.Module):
    """A user's conv → BatchNorm → ``torch.relu`` (a function, not a module) → one logit, as QA's ``qamods:one``."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 26 * 26, 1)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.activate(self.bn(self.c(x))).flatten(1))


class _InPlaceFunctionalRelu(_FunctionalRelu):
    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu(h, inplace=True)


class _InPlaceModuleRelu(_FunctionalRelu):
    def __init__(self):
        super().__init__()
        self.act = torch.nn.ReLU(inplace=True)  # in place, so the layer search stops before it

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h)


class _ModuleRelu(_FunctionalRelu):
    def __init__(self):
        super().__init__()
        self.act = torch.nn.ReLU()  # the layer search reads this module's output: the reference

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h)


@pytest.mark.parametrize("kind", [_FunctionalRelu, _InPlaceFunctionalRelu, _InPlaceModuleRelu])
def test_gradcam_reads_the_map_after_an_activation_the_layer_search_cannot_take(digits, kind):
    """Read before a functional ReLU, the map holds the negatives the network clips: on QA's one-logit model the
    blank background came out as saturated evidence for the negative class (explained through -logit)."""
    torch.manual_seed(0)
    reference = _ModuleRelu()
    with torch.no_grad():
        reference.bn.running_mean.fill_(0.3)  # BatchNorm leaves the blank background negative, as a trained one does
    model = kind()
    model.load_state_dict(reference.state_dict(), strict=False)
    x, options = digits[0][:4], default_options("gradcam")  # relu_attributions, as slimlens explain runs it
    target = explain.BinaryTarget(torch.tensor([0, 1, 0, 1]))  # the negative class through -logit, as in QA's run
    expected = explain.attribute(reference.eval(), x, target, "gradcam", **options)
    assert torch.allclose(explain.attribute(model.eval(), x, target, "gradcam", **options), expected, atol=1e-9)
    assert expected.abs().amax((1, 2, 3)).min() > 0 and expected[..., 0, 0].abs().max() == 0  # nothing on the blank corner
    before = explain.attribute(model, x, target, "gradcam", layer=model.bn, **options)  # a layer asked for is read as it is
    assert before[..., 0, 0].abs().max() > 0  # the clipped negatives were evidence there
    record = explain.methods.gradcam_layer_record(model, x)
    assert record["layer"] == "bn" and "relu" in record["read_after"]
    assert explain.methods.gradcam_layer_record(reference, x) == {"layer": "act"}  # a module activation: the layer itself


def test_gradcam_taps_each_chunk_and_leaves_other_layers_as_they_were(cnn, digits):
    """The activated map is read in every chunk of a batch; a layer the network reads directly (seed-cnn's ReLU module,
    lenet5's convolution before its max-pool) gives what Captum gives on that layer."""
    model, x = _FunctionalRelu().eval(), digits[0]
    target = explain.BinaryTarget(torch.tensor([0, 1] * 4))
    assert torch.allclose(explain.attribute(model, x, target, "gradcam", batch_size=3), explain.attribute(model, x, target, "gradcam"), atol=1e-9)
    for net in (cnn, zoo.load("lenet5")):
        record = explain.methods.gradcam_layer_record(net, x)
        assert set(record) == {"layer"}
        layer = net.get_submodule(record["layer"])
        direct = LayerGradCam(net, layer).attribute(x, target=digits[1])
        assert torch.equal(explain.attribute(net, x, digits[1], "gradcam", interpolate_mode="nearest"),
                           torch.nn.functional.interpolate(direct, size=(28, 28), mode="nearest"))


def test_gradcam_reads_a_residual_block_at_its_output_not_at_its_last_batchnorm(digits):
    """resnet-mnist's map was read at layer3.1.bn2, before the skip path is added and the block's ReLU applied:
    the map the pool and head read is the block's output, the layer pytorch-grad-cam takes for a ResNet."""
    net, x, target = zoo.load("resnet-mnist"), digits[0][:4], digits[1][:4]
    assert explain.methods.gradcam_layer_record(net, x) == {"layer": "layer3.1"}
    direct = LayerGradCam(net, net.layer3[1]).attribute(x, target=target)
    ours = explain.attribute(net, x, target, "gradcam", interpolate_mode="nearest")
    assert torch.equal(ours, torch.nn.functional.interpolate(direct, size=(28, 28), mode="nearest"))
    before_add = LayerGradCam(net, net.layer3[1].bn2).attribute(x, target=target)
    assert not torch.allclose(direct, before_add, atol=1e-3)
    # a block that only passes its last layer's map on keeps that layer's name (seed-cnn's features ends in its ReLU)
    assert explain.methods.gradcam_layer_record(zoo.load("seed-cnn"), x) == {"layer": "features.8"}


class _Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.refine = torch.nn.Conv2d(8, 8, 3, padding=1)  # registered here, called by the model after the backbone returns

    def forward(self, x):
        return self.stem(x)


class _RefinedAfterBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.backbone.refine(self.backbone(x)).mean((2, 3)))


def test_gradcam_takes_a_block_only_when_its_call_holds_the_layers(digits):
    """Review: the block search walked registered parents, so a conv registered under a backbone but run after it
    was read at the backbone's output, the map before that last conv."""
    torch.manual_seed(0)
    assert explain.methods.gradcam_layer_record(_RefinedAfterBackbone().eval(), digits[0][:2]) == {"layer": "backbone.refine"}


class _FlatResidual(torch.nn.Module):
    """A user's residual step written in the forward, as QA's ``resadd``: relu(x + bn(conv(x))), no block module."""

    activate_sum = True

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.read = torch.nn.Identity()  # where the reference reads; the search must find the same map without it
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.bn(self.conv(x))  # the branch is the second operand
        x = self.read(torch.relu(x) if self.activate_sum else x)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class _FlatResidualIntoPool(_FlatResidual):
    activate_sum = False


@pytest.mark.parametrize("kind, steps", [(_FlatResidual, "add, relu"), (_FlatResidualIntoPool, "add")])
def test_gradcam_reads_a_residual_add_written_in_the_forward_after_the_sum(digits, kind, steps):
    """On QA's resadd the map was read at the branch's BatchNorm, before `x +`: deletion AUC 0.205 against 0.175 read after the sum."""
    torch.manual_seed(0)
    model, x, target = kind().eval(), digits[0][:4], digits[1][:4]
    record = explain.methods.gradcam_layer_record(model, x)
    assert record["layer"] == "bn" and record["read_after"].startswith(f"{steps}: the forward adds bn's output to another map")
    options = default_options("gradcam")
    expected = explain.attribute(model, x, target, "gradcam", layer=model.read, **options)
    assert torch.allclose(explain.attribute(model, x, target, "gradcam", **options), expected, atol=1e-9)
    before_add = explain.attribute(model, x, target, "gradcam", layer=model.bn, **options)
    assert expected.abs().amax() > 0 and (before_add - expected).abs().amax() > 0.1 * expected.abs().amax()


def _colour_bar_scale_texts(fig) -> list:
    """Every colour bar's offset/exponent text (the "×10⁻⁸" of a tiny map) as the PNG draws it."""
    heatmaps.png_bytes(fig)
    return [ax.xaxis.get_offset_text() for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def test_a_tiny_maps_colour_bar_shows_its_exponent_inside_the_picture(digits):
    """A map of values near 6e-8 read 0-6 on its colour bar: the 1e-8 was drawn below the bottom of the PNG."""
    x = digits[0][0]
    tiny = torch.linspace(0, 6e-8, 784).reshape(1, 28, 28)
    figures = [heatmaps.heatmap(x, tiny, title="occlusion\nsecond line"), heatmaps.row_heatmap(x, tiny, title="lstm"),
               heatmaps.grid(x[None], {"occlusion": tiny[None]}, shared_scale=True)]
    for fig in figures:
        texts = _colour_bar_scale_texts(fig)
        assert texts and all(t.get_text() for t in texts)  # an exponent is drawn
        for t in texts:
            box = t.get_window_extent()
            assert "-8" in t.get_text().replace("\N{MINUS SIGN}", "-") and box.y0 >= 0 and box.x1 <= fig.bbox.x1, (t.get_text(), box)
    # six-figure values are written with their power of ten, not as 600000 running into its neighbours
    assert "10^{5}" in _colour_bar_scale_texts(heatmaps.heatmap(x, tiny * 1e13))[0].get_text()


def test_drift_figure_keeps_each_figure_beside_its_floor_and_its_max_diff_readable(digits):
    """QA: '(floor 0.04)' wrapped onto a line of its own, and 'max |diff|' in grey was lost over a dark difference map."""
    x = digits[0][:2]
    maps = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    title = "gradcam drift, mean of 4: Spearman -0.17 (floor -0.03), top-10% IoU 0.10 (floor 0.10), SSIM 0.04 (floor 0.04)"
    fig = heatmaps.drift_figure(x, maps, -maps, labels=["a", "b"], names=("original", "distill"), title=title)
    lines = fig._suptitle.get_text().splitlines()
    assert lines[0] == "gradcam drift, mean of 4:" and all(line.count("(floor") == line.count(")") for line in lines)
    assert all(f in fig._suptitle.get_text() for f in ("Spearman -0.17 (floor -0.03)", "SSIM 0.04 (floor 0.04)"))
    labels = [t for ax in fig.axes for t in ax.texts if t.get_text().startswith("max |diff|")]
    assert len(labels) == 2 and all(t.get_bbox_patch() is not None and t.get_bbox_patch().get_facecolor()[:3] == (1.0, 1.0, 1.0) for t in labels)
    heatmaps.png_bytes(fig)


def test_the_grids_colour_bar_labels_are_legible_and_apart(digits):
    """README walkthrough: 6 pt labels, five to a bar, and neighbouring bars' end labels nearly touching ("1.0 0.0")."""
    x = digits[0][:2]
    maps = {name: torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i, name in enumerate(["a", "b", "c", "d"])}
    maps["b"] = maps["b"].abs()  # an unsigned column: 0 to 1
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = heatmaps.grid(x, maps)
    canvas = FigureCanvasAgg(fig)  # drawn on Agg, as the PNG is
    canvas.draw()
    renderer = canvas.get_renderer()
    bars = sorted((ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None), key=lambda ax: ax.get_position().x0)
    spans = []
    for ax in bars:
        low, high = sorted(ax.get_xlim())
        labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible() and low - 1e-9 <= t.get_position()[0] <= high + 1e-9]
        assert len(labels) == 3 and all(t.get_fontsize() >= 7 for t in labels)
        boxes = [t.get_window_extent(renderer) for t in labels]
        spans.append((min(b.x0 for b in boxes), max(b.x1 for b in boxes)))
    assert all(right + 8 < left for (_, right), (left, _) in zip(spans, spans[1:])), spans  # pixels between neighbours
