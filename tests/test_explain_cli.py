"""slimlens explain end to end: the output folder, deployed int8 ONNX variants, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import explain
import zoo
from compress import OnnxVariant, load_variant


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seed-cnn exported to ONNX and dynamically quantized to int8, saved as a variant (no stand-in)."""
    from onnxruntime.quantization import quantize_dynamic

    folder = tmp_path_factory.mktemp("variant")
    model = zoo.load("seed-cnn")
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), folder / "fp32.onnx", dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    quantize_dynamic(str(folder / "fp32.onnx"), str(folder / "int8.onnx"))
    variant = OnnxVariant(name="int8-onnx", artifact=folder / "int8.onnx", source={"zoo": "seed-cnn"}, steps=[{"step": "quantize-dynamic-onnx"}])
    return variant.save(folder)


def _bad(argv: list[str], capsys: pytest.CaptureFixture, out: Path, message: str) -> None:
    code = cli.main(["explain", *argv, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("slimlens: error:") and message in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing half-written


def test_gradient_free_explanation_of_an_int8_onnx_variant_runs(int8_onnx):
    variant = load_variant(int8_onnx)
    x = zoo.dataset("mnist", "test").images[:4]
    settings = {**explain.default_options("occlusion"), "perturbations_per_eval": 169}
    deployed = explain.attribute(variant, x, method="occlusion", **settings)
    original = explain.attribute(zoo.load("seed-cnn"), x, method="occlusion", **settings)
    assert deployed.shape == x.shape and explain.compare(original, deployed)["mean"]["ssim"] > 0.8
    with pytest.raises(explain.GradientsUnavailableError, match="no float stand-in"):
        explain.attribute(variant, x, method="integrated_gradients")


def test_explain_writes_maps_grid_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["explain", "seed-cnn", "--methods", "saliency,gradcam", "--samples", "2", "--out", str(out), "--quiet"])
    assert code == 0 and capsys.readouterr().out.strip() == str(out / "explain.json")
    result = json.loads((out / "explain.json").read_text())
    assert set(result["methods"]) == {"saliency", "gradcam"} and result["methods"]["gradcam"]["layer"] == "features.8"  # the ReLU after the last conv
    assert result["inputs"]["labels"] == [0, 1] and len(result["inputs"]["predictions"]) == 2
    assert {"deletion_auc", "insertion_auc", "infidelity", "sensitivity_max", "randomisation_flagged"} <= set(result["trust"]["saliency"])
    assert result["trust"]["saliency"]["deletion_auc"] < result["trust"]["random_order"]["deletion_auc"]
    maps = sorted((out / "maps").glob("*.png"))
    assert len(maps) == 4 and sorted(result["files"]) == sorted([f"maps/{p.name}" for p in maps] + ["grid.png", "explain.json"])
    for path in maps:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (360, 300)
    with Image.open(out / "grid.png") as img:
        assert img.format == "PNG" and img.size[1] > img.size[0] / 3
    # a second run replaces the folder whole
    assert cli.main(["explain", "seed-cnn", "--methods", "saliency", "--indices", "7", "--no-trust", "--out", str(out), "--quiet"]) == 0
    assert len(list((out / "maps").glob("*.png"))) == 1 and not list(tmp_path.glob(".run*"))


def test_variant_drift_and_converted_image(tmp_path, int8_onnx, capsys):
    out = tmp_path / "drift"
    code = cli.main(["explain", "seed-cnn", "--methods", "feature_ablation", "--samples", "3", "--variant", str(int8_onnx), "--no-trust", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "explain.json").read_text())
    assert result["variant"]["name"] == "int8-onnx" and result["variant"]["agreement_with_original"] > 0.6
    d = result["drift"]["feature_ablation"]
    assert {"spearman", "top10_iou", "ssim", "deletion_auc_change"} <= set(d) and len(d["details"]["per_sample"]["ssim"]) == 3
    assert d["ssim"] > 0.8 and len(d["most_drifting"]) == 3
    assert (out / d["figure"]).is_file() and d["variant_ran_on"] == "variant int8-onnx itself"
    # a 56x56 RGB scan of a dark digit on white paper: converted, shrunk and inverted, then explained
    data = zoo.dataset("mnist", "test")
    digit = data.images[data.labels == 3][0, 0].numpy()
    scan = np.repeat(np.kron(255 - digit * 255, np.ones((2, 2)))[..., None], 3, axis=2).astype(np.uint8)
    Image.fromarray(scan, "RGB").save(tmp_path / "scan.png")
    out2 = tmp_path / "image"
    assert cli.main(["explain", "seed-cnn", "--image", str(tmp_path / "scan.png"), "--methods", "saliency", "--no-trust", "--out", str(out2), "--quiet"]) == 0
    result = json.loads((out2 / "explain.json").read_text())
    assert result["inputs"]["predictions"] == ["3"]
    assert any("greyscale" in n for n in result["inputs"]["conversions"]) and any("inverted" in n for n in result["inputs"]["conversions"])


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, int8_onnx):
    out = tmp_path / "never"
    _bad(["seed-cnn", "--methods", "integrated_gradients,gradcamm"], capsys, out, "unknown method 'gradcamm'")
    _bad(["softmax-regression", "--methods", "gradcam"], capsys, out, "gradcam needs a convolutional layer")
    _bad(["seed-cnn", "--methods", "saliency", "--variant", str(int8_onnx)], capsys, out, "no float stand-in")
    _bad(["seed-cnn", "--indices", "3,1000"], capsys, out, "index 1000 is out of range")
    _bad(["seed-cnn", "--indices", "three"], capsys, out, "--indices takes whole numbers")
    _bad(["no-such-model"], capsys, out, "no zoo model named 'no-such-model'")
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8), "L").save(tmp_path / "small.png")
    _bad(["seed-cnn", "--image", str(tmp_path / "small.png")], capsys, out, "is 30x20 pixels")
    (tmp_path / "fake.png").write_text("not a png")
    _bad(["seed-cnn", "--image", str(tmp_path / "fake.png")], capsys, out, "is not a readable image")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    code = cli.main(["explain", "seed-cnn", "--out", str(taken), "--quiet"])
    assert code == 2 and "not an explain output folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_a_variant_of_another_model_is_refused(tmp_path, capsys, int8_onnx):
    out = tmp_path / "never"
    # seed-cnn's variant beside lenet5: its drift would be measured against the wrong original
    _bad(["lenet5", "--methods", "occlusion", "--variant", str(int8_onnx)], capsys, out,
         f"was made from seed-cnn, not lenet5; run `slimlens explain seed-cnn --variant {int8_onnx}`")
    # a variant that names no zoo model (a user's builder) is judged by its outputs on the model's inputs
    autoencoder = tmp_path / "autoencoder.onnx"
    torch.onnx.export(zoo.load("seed-autoencoder"), torch.zeros(1, 1, 28, 28), autoencoder, dynamo=False, input_names=["input"],
                      output_names=["image"], dynamic_axes={"input": {0: "batch"}, "image": {0: "batch"}})
    saved = OnnxVariant(name="mine", artifact=autoencoder, source={}, steps=[]).save(tmp_path)
    _bad(["seed-cnn", "--methods", "occlusion", "--variant", str(saved)], capsys, out,
         "gives outputs of shape (2, 1, 28, 28) where seed-cnn gives (2, 10)")
    # a variant of a user's own network is another model, even where its outputs fit
    theirs = OnnxVariant(name="theirs", artifact=int8_onnx.parent / "int8.onnx", source={"builder": "mypkg.nets:cnn"}, steps=[])
    _bad(["seed-cnn", "--methods", "occlusion", "--variant", str(theirs.save(tmp_path / "theirs"))], capsys, out,
         "was made from your model mypkg.nets:cnn(), not seed-cnn; run `slimlens explain mypkg.nets:cnn --weights FILE --data DATASET")


@pytest.fixture(scope="module")
def int8_onnx_with_stand_in(int8_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 ONNX variant saved with seed-cnn itself as its float stand-in, as `slimlens compress` saves int8-static-onnx."""
    folder = tmp_path_factory.mktemp("stand-in")
    variant = OnnxVariant(name="int8-onnx-si", artifact=int8_onnx.parent / "int8.onnx", source={"zoo": "seed-cnn"},
                          stand_in=zoo.load("seed-cnn"), steps=[{"step": "quantize-dynamic-onnx"}])
    return variant.save(folder)


def test_an_onnx_variant_gets_gradient_free_defaults(tmp_path, int8_onnx_with_stand_in, capsys):
    out = tmp_path / "defaults"
    assert cli.main(["explain", "seed-cnn", "--variant", str(int8_onnx_with_stand_in), "--samples", "2", "--no-trust", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "explain.json").read_text())
    assert list(result["methods"]) == ["occlusion", "feature_ablation"]  # not gradients of a stand-in equal to the original
    assert all(d["measured"] and d["variant_ran_on"] == "variant int8-onnx-si itself" for d in result["drift"].values())


def test_gradient_drift_on_a_stand_in_equal_to_the_original_is_not_measured(tmp_path, int8_onnx_with_stand_in, capsys):
    out = tmp_path / "asked"
    code = cli.main(["explain", "seed-cnn", "--variant", str(int8_onnx_with_stand_in), "--methods", "saliency,occlusion", "--samples", "2", "--no-trust", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and "drift: saliency not measured" in err
    result = json.loads((out / "explain.json").read_text())
    d = result["drift"]["saliency"]
    assert d["measured"] is False and d["spearman"] is None and d["mean"] == {"spearman": None, "top10_iou": None, "ssim": None}
    assert d["variant_ran_on"].startswith("not measured:") and "weights equal seed-cnn's" in d["variant_ran_on"] and d["figure"] is None
    assert result["drift"]["occlusion"]["measured"] and result["drift"]["occlusion"]["spearman"] is not None
    assert "equal the original's" in result["variant"]["gradient_methods_run_on"]


def test_gradient_drift_on_a_different_stand_in_says_what_it_measures(tmp_path, int8_onnx):
    from explain.run import Request, run

    stand_in = zoo.load("seed-cnn")
    with torch.no_grad():
        first = next(stand_in.parameters())  # weights that differ from the original's, as a dequantized copy's do
        first.add_(0.05 * torch.randn(first.shape, generator=torch.Generator().manual_seed(0)))
    variant = OnnxVariant(name="int8-onnx", artifact=int8_onnx.parent / "int8.onnx", source={"zoo": "seed-cnn"}, stand_in=stand_in)
    result = run(Request(model="seed-cnn", out=tmp_path / "out", methods=["saliency"], samples=2, variant=variant, trust=False))
    d = result["drift"]["saliency"]
    assert d["measured"] and 0 < d["spearman"] < 1
    assert "float stand-in" in d["variant_ran_on"] and "not what the deployed variant computes" in d["variant_ran_on"]


def test_too_many_samples_a_model_file_as_variant_and_an_unwritable_out_are_refused_up_front(tmp_path, capsys, int8_onnx):
    out = tmp_path / "never"
    _bad(["seed-cnn", "--samples", "1001"], capsys, out, "--samples 1001 is more than the 1,000 images in the mnist test split; give at most 1000")
    _bad(["seed-cnn", "--variant", str(int8_onnx.parent / "int8-onnx.onnx")], capsys, out, f"pass the .variant.json beside it: {int8_onnx}")
    (tmp_path / "a-file").write_text("")
    _bad(["seed-cnn"], capsys, tmp_path / "a-file" / "out", "cannot be created")
    _bad(["seed-cnn"], capsys, tmp_path / "a-file" / "deeper" / "out", f"{tmp_path / 'a-file'} is not a folder")


def test_the_grid_is_capped_and_says_so(tmp_path, capsys, monkeypatch):
    import explain.run as run_mod

    monkeypatch.setattr(run_mod, "GRID_MAX_ROWS", 2)  # the real cap (32 rows) takes seconds to draw
    out = tmp_path / "capped"
    assert cli.main(["explain", "seed-cnn", "--methods", "saliency", "--samples", "3", "--no-trust", "--out", str(out)]) == 0
    assert "grid.png shows the first 2 of 3 samples" in capsys.readouterr().err
    result = json.loads((out / "explain.json").read_text())
    assert result["grid"]["samples"] == 2 and result["grid"]["of"] == 3 and len(list((out / "maps").glob("*.png"))) == 3


def _retrained(root: Path, name: str, change) -> Path:
    """``root`` (a copy of the shipped weights) with ``name``'s weights changed by ``change(model)`` and its card's sha256 to match."""
    from zoo.weights import save_state_dict

    model = zoo.load(name, root)
    with torch.no_grad():
        change(model)
    weights = root / f"{name}.safetensors"
    card_file = root / f"{name}.card.json"
    card = json.loads(card_file.read_text())
    card["weights"].update(sha256=save_state_dict(model, weights), bytes=weights.stat().st_size)
    card_file.write_text(json.dumps(card, indent=2))
    return root


def test_all_zero_gradcam_maps_are_flagged_and_not_scored(tmp_path, capsys, trained_copy):
    def only_negative_evidence(model):  # every channel of Grad-CAM's (post-ReLU) map lowers every score; saliency still sees the pixels
        model.head.weight.copy_(-model.head.weight.abs())

    root = _retrained(trained_copy, "resnet-mnist", only_negative_evidence)
    out = tmp_path / "blank"
    argv = ["explain", "resnet-mnist", "--methods", "gradcam,saliency", "--samples", "2", "--weights-root", str(root), "--out", str(out)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    result = json.loads((out / "explain.json").read_text())
    zero = result["methods"]["gradcam"]["all_zero_maps"]
    assert zero["count"] == zero["of"] == 2 and "relu_attributions" in zero["why"] and "gradcam: 2 of 2 maps are all zero" in err
    assert result["trust"]["gradcam"]["deletion_auc"] is None and "all zero" in result["trust"]["gradcam"]["not_measured"]
    assert result["trust"]["saliency"]["deletion_auc"] is not None and "all_zero_maps" not in result["methods"]["saliency"]


def test_drift_leaves_out_all_zero_maps(tmp_path):
    from compress import TorchVariant
    from explain.run import Request, run

    dead = zoo.load("seed-cnn")
    with torch.no_grad():
        dead.head.weight.zero_()  # no gradient reaches any pixel: every map of this variant is blank
    variant = TorchVariant(name="dead", module=dead, source={"zoo": "seed-cnn"})
    result = run(Request(model="seed-cnn", out=tmp_path / "out", methods=["saliency"], samples=2, variant=variant, trust=False))
    d = result["drift"]["saliency"]
    assert d["measured"] is False and d["spearman"] is None and "all zero" in d["not_measured"]


def test_a_discriminators_variant_is_compared_like_a_classifiers(tmp_path, capsys):
    onnx_file = tmp_path / "d.onnx"
    torch.onnx.export(zoo.load("dcgan-d"), torch.zeros(1, 1, 28, 28), onnx_file, dynamo=False, input_names=["input"],
                      output_names=["logit"], dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}})
    saved = OnnxVariant(name="d-onnx", artifact=onnx_file, source={"zoo": "dcgan-d"}, steps=[]).save(tmp_path)
    out = tmp_path / "ex"
    assert cli.main(["explain", "dcgan-d", "--variant", str(saved), "--samples", "2", "--no-trust", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "explain.json").read_text())
    assert result["variant"]["agreement_with_original"] == 1.0  # the same network in ONNX Runtime
    assert "cannot be checked" in capsys.readouterr().err  # saved by hand without the weights' sha256: a warning, even under --quiet
    assert set(result["drift"]) == {"occlusion", "feature_ablation"} and result["drift"]["occlusion"]["spearman"] > 0.99
    _bad(["seed-autoencoder", "--variant", str(saved)], capsys, tmp_path / "never", "explain it without --variant")


def test_models_without_one_output_score_say_why_they_have_no_trust_metrics(tmp_path):
    out = tmp_path / "ae"
    assert cli.main(["explain", "seed-autoencoder", "--samples", "2", "--methods", "saliency", "--out", str(out), "--quiet"]) == 0
    trust_record = json.loads((out / "explain.json").read_text())["trust"]
    assert list(trust_record) == ["not_measured"] and "reconstruction model has none" in trust_record["not_measured"]


def test_a_capped_discriminator_grid_shows_real_and_generated_digits(tmp_path):
    out = tmp_path / "d"
    assert cli.main(["explain", "dcgan-d", "--samples", "20", "--methods", "occlusion", "--no-trust", "--out", str(out), "--quiet"]) == 0
    grid = json.loads((out / "explain.json").read_text())["grid"]
    assert grid["samples"] == 32 and grid["of"] == 40 and "the first 16 real and 16 generated" in grid["note"]


def test_a_generator_takes_at_most_as_many_latents_as_a_test_split(tmp_path, capsys):
    _bad(["dcgan-g", "--samples", "1001"], capsys, tmp_path / "never", "give at most 1000")



def test_out_dot_replaces_an_explain_folder_it_is_run_in(tmp_path, capsys, monkeypatch):
    out = tmp_path / "maps"
    assert cli.main(["explain", "seed-cnn", "--samples", "1", "--methods", "saliency", "--no-trust", "--out", str(out)]) == 0
    monkeypatch.chdir(out)
    assert cli.main(["explain", "seed-cnn", "--samples", "2", "--methods", "saliency", "--no-trust", "--out", "."]) == 0
    assert len(json.loads((out / "explain.json").read_text())["inputs"]["sources"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]  # no staging or old folder left beside it
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # the user's usual mode, not mkdtemp's private 0700


def test_drift_of_a_sampling_method_against_an_identical_copy_is_none(tmp_path):
    """LIME (torch) and GradientSHAP (NumPy) draw at random: the original's and the variant's maps must use the same draws."""
    from compress import TorchVariant
    from explain.run import Request, run

    variant = TorchVariant(name="copy", module=zoo.load("seed-cnn"), source={"zoo": "seed-cnn"})
    methods = ["lime", "gradient_shap"]
    result = run(Request(model="seed-cnn", out=tmp_path / "out", methods=methods, samples=2, variant=variant, trust=False))
    for method in methods:
        assert result["drift"][method]["spearman"] == pytest.approx(1.0), method


class _BlindOnFaintDigits(torch.nn.Module):
    """seed-cnn, except that on digits with little ink its scores no longer depend on the pixels: a variant whose
    saliency maps of those digits are all zero while it still predicts what seed-cnn predicts."""

    def __init__(self):
        super().__init__()
        self.net = zoo.load("seed-cnn")

    def forward(self, x):
        out = self.net(x)
        inked = x.flatten(1).sum(1) > 108
        return torch.where(inked[:, None], out, out.detach())


def test_drift_leaves_out_inputs_whose_variant_map_is_blank_and_says_faithfulness_covers_the_rest(tmp_path):
    """Only trust.faithfulness_change was tested: nothing checked that a whole run hands it the subset and the count."""
    from compress import TorchVariant
    from explain.run import Request, run

    x = zoo.dataset("mnist", "test").images[:4]
    faint = (x.flatten(1).sum(1) <= 108).tolist()
    assert 0 < sum(faint) < 4  # the first four test digits hold both kinds
    variant = TorchVariant(name="blind", module=_BlindOnFaintDigits(), source={"zoo": "seed-cnn"})
    result = run(Request(model="seed-cnn", out=tmp_path / "out", methods=["saliency"], indices=[0, 1, 2, 3], variant=variant, trust=False))
    drift = result["drift"]["saliency"]
    kept = [f"test #{i}" for i in range(4) if not faint[i]]
    assert drift["details"]["samples"] == kept and drift["left_out"].startswith(f"{sum(faint)} of 4 samples where a map is all zero")
    assert drift["faithfulness"]["samples"].startswith(f"the {len(kept)} of 4 inputs where neither map is all zero")
    assert drift["spearman"] == pytest.approx(1.0)  # where the variant's map has content it is seed-cnn's own


def test_gradcam_reads_the_map_after_the_batchnorm_that_follows_the_last_conv(tmp_path, capsys):
    """Before BatchNorm each channel carries the constant BatchNorm removes: on dcgan-d that made every map blank."""
    out = tmp_path / "discriminator"
    assert cli.main(["explain", "dcgan-d", "--methods", "gradcam", "--samples", "2", "--no-trust", "--out", str(out)]) == 0
    result = json.loads((out / "explain.json").read_text())
    assert result["methods"]["gradcam"]["layer"] == "net.4" and "all_zero_maps" not in result["methods"]["gradcam"]


def test_empty_reversed_or_huge_indices_and_empty_methods_are_refused(tmp_path, capsys):
    out = tmp_path / "never"
    _bad(["seed-cnn", "--indices", ""], capsys, out, "--indices is empty")  # it ran the default samples
    _bad(["seed-cnn", "--methods", ""], capsys, out, "--methods is empty")  # it ran the default methods
    _bad(["seed-cnn", "--indices", "5-3"], capsys, out, "--indices range 5-3 runs backwards; write it lowest first, e.g. 3-5")
    _bad(["seed-cnn", "--indices", "0-99999999999999"], capsys, out, "holds 100,000,000,000,000 indices; give at most 100,000")


def test_a_one_output_models_maps_trust_and_drift_are_for_the_predicted_class(tmp_path):
    """simplenet and dcgan-d give one score; where they predict the other class, the maps explain that class, not the score."""
    from compress import TorchVariant
    from explain.run import Request, run

    for model, methods, negative in (("simplenet", ["integrated_gradients", "occlusion"], "digit<5"), ("dcgan-d", ["saliency"], "generated")):
        same = TorchVariant(name="same", module=zoo.load(model), source={"zoo": model})
        result = run(Request(model=model, out=tmp_path / model, methods=methods, samples=4 if model == "simplenet" else 2, variant=same))
        predictions, confidence = result["inputs"]["predictions"], result["inputs"]["confidence"]
        assert negative in predictions
        for method in methods:
            assert result["methods"][method]["target"].startswith("the predicted class") and negative in result["methods"][method]["target"]
            # deletion starts from the score of the class each map explains: the predicted class's probability
            assert result["trust"][method]["details"]["deletion_curve_mean"][0] == pytest.approx(sum(confidence) / len(confidence), abs=1e-3)
            assert result["drift"][method]["faithfulness"]["original"]["deletion_auc"] == pytest.approx(result["trust"][method]["deletion_auc"], abs=1e-6)


@pytest.fixture(scope="module")
def lenet5_int8_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `slimlens compress lenet5 --recipe int8` run folder, from the shipped weights."""
    out = tmp_path_factory.mktemp("compress") / "lenet5-int8"
    assert cli.main(["compress", "lenet5", "--recipe", "int8", "--out", str(out), "--no-latency", "--no-report", "--quiet"]) == 0
    return out


def test_a_variant_is_refused_beside_weights_it_was_not_made_from(tmp_path, capsys, lenet5_int8_run, trained_copy):
    variant = lenet5_int8_run / "variants" / "int8-static-onnx.variant.json"
    shipped = zoo.card("lenet5").weights["sha256"]
    assert json.loads(variant.read_text())["original_weights_sha256"] == shipped
    assert all(json.loads(p.read_text())["original_weights_sha256"] == shipped for p in (lenet5_int8_run / "variants").glob("*.variant.json"))

    def nudge(model):  # retrained weights: the same architecture, other values
        next(model.parameters()).mul_(1.01)

    root = _retrained(trained_copy, "lenet5", nudge)
    retrained = zoo.card("lenet5", root).weights["sha256"]
    out = tmp_path / "never"
    _bad(["lenet5", "--variant", str(variant), "--weights-root", str(root), "--methods", "occlusion", "--samples", "2"], capsys, out,
         f"was compressed from lenet5 weights with sha256 {shipped[:12]}…, but the lenet5 weights in --weights-root {root} have sha256 "
         f"{retrained[:12]}…, so its drift would be measured against a different original; leave out --weights-root: it was made from the shipped weights")
    # beside the weights it was made from, it runs and says they were checked
    ok = tmp_path / "ok"
    assert cli.main(["explain", "lenet5", "--variant", str(variant), "--methods", "occlusion", "--samples", "2", "--no-trust", "--out", str(ok), "--quiet"]) == 0
    assert json.loads((ok / "explain.json").read_text())["variant"]["original_weights"] == {"sha256": shipped, "checked": True}
    # a variant written before the hash was recorded still loads, and the run says it could not check
    old = tmp_path / "old"
    shutil.copytree(lenet5_int8_run / "variants", old)
    meta = json.loads((old / variant.name).read_text())
    del meta["original_weights_sha256"]
    (old / variant.name).write_text(json.dumps(meta))
    older = tmp_path / "older"
    assert cli.main(["explain", "lenet5", "--variant", str(old / variant.name), "--weights-root", str(root), "--methods", "occlusion",
                     "--samples", "2", "--no-trust", "--out", str(older)]) == 0
    checked = json.loads((older / "explain.json").read_text())["variant"]["original_weights"]
    assert checked["checked"] is False and "cannot be checked" in checked["note"] and "cannot be checked" in capsys.readouterr().err


def test_a_variant_of_retrained_weights_asks_for_their_weights_root(tmp_path, capsys, trained_copy):
    import compress

    def nudge(model):
        next(model.parameters()).mul_(1.01)

    root = _retrained(trained_copy, "lenet5", nudge)
    # as `slimlens compress lenet5 --weights ROOT/lenet5.safetensors` does: the retrained weights, compressed
    made = compress.run(compress.load_model("lenet5", root / "lenet5.safetensors"), [{"step": "quantize_dynamic"}], "lenet5",
                        out_dir=tmp_path / "run", export=False)
    variant = made.out_dir / "variants" / "int8-dynamic.variant.json"
    assert json.loads(variant.read_text())["original_weights_sha256"] == zoo.card("lenet5", root).weights["sha256"]
    argv = ["lenet5", "--variant", str(variant), "--methods", "occlusion", "--samples", "2", "--no-trust"]
    _bad(argv, capsys, tmp_path / "never", "but the lenet5 weights shipped with slimlens have sha256")
    _bad(argv, capsys, tmp_path / "never", "pass the --weights-root it was made with")
    assert cli.main(["explain", *argv, "--weights-root", str(root), "--out", str(tmp_path / "ok"), "--quiet"]) == 0


def test_drift_is_reported_beside_its_floor(tmp_path, int8_onnx, capsys):
    """Top-k IoU and SSIM count the blank background two maps share: the floor says what maps of different digits score."""
    out = tmp_path / "floor"
    assert cli.main(["explain", "seed-cnn", "--methods", "occlusion", "--samples", "6", "--variant", str(int8_onnx), "--no-trust", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    d = json.loads((out / "explain.json").read_text())["drift"]["occlusion"]
    floor = d["floor"]
    assert set(floor) >= {"spearman", "top10_iou", "ssim", "pairs", "how"} and "other" in floor["how"]
    assert all(d[k] > floor[k] for k in ("spearman", "top10_iou", "ssim")) and floor["ssim"] > 0.1  # not 0: the background is shared
    assert f"SSIM {d['ssim']:.2f} (floor {floor['ssim']:.2f})" in err


LENET5_BUILDER = "zoo.models.lenet:lenet5"


def test_a_users_own_model_is_explained_as_its_zoo_twin_is(tmp_path, capsys):
    weights = zoo.cards.weights_path("lenet5")
    argv = ["--methods", "saliency,occlusion", "--samples", "3", "--quiet"]
    assert cli.main(["explain", LENET5_BUILDER, "--weights", str(weights), "--data", "mnist", *argv, "--out", str(tmp_path / "own")]) == 0
    assert cli.main(["explain", "lenet5", *argv, "--out", str(tmp_path / "zoo")]) == 0
    own, twin = (json.loads((tmp_path / run / "explain.json").read_text()) for run in ("own", "zoo"))
    assert own["model"] == {"name": LENET5_BUILDER, "family": "cnn", "task": "classification", "card_metric": {}}
    assert own["inputs"] == twin["inputs"]  # the same test digits, predicted the same way
    for method in ("saliency", "occlusion"):
        assert own["trust"][method]["deletion_auc"] == pytest.approx(twin["trust"][method]["deletion_auc"], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "own" / "maps").iterdir()) == sorted(p.name for p in (tmp_path / "zoo" / "maps").iterdir())


def test_a_one_output_users_model_is_read_from_its_outputs(tmp_path):
    # simplenet ends in a sigmoid: its card says probability, and a user's copy must be read the same way from its outputs
    argv = ["--methods", "occlusion", "--samples", "4", "--quiet"]
    assert cli.main(["explain", "zoo.models.mlp:SimpleNet", "--weights", str(zoo.cards.weights_path("simplenet")), "--data", "mnist-ge5",
                     *argv, "--out", str(tmp_path / "own")]) == 0
    assert cli.main(["explain", "simplenet", *argv, "--out", str(tmp_path / "zoo")]) == 0
    own, twin = (json.loads((tmp_path / run / "explain.json").read_text()) for run in ("own", "zoo"))
    assert own["model"]["task"] == "binary-classification" and "digit<5" in own["inputs"]["predictions"]
    assert own["inputs"]["confidence"] == twin["inputs"]["confidence"]  # 1 - p where it predicts digit<5, not a sigmoid of p
    assert own["methods"]["occlusion"]["target"] == twin["methods"]["occlusion"]["target"]


def test_a_users_variant_is_compared_with_the_weights_it_was_made_from(tmp_path, capsys):
    weights = zoo.cards.weights_path("lenet5")
    run = tmp_path / "run"
    assert cli.main(["compress", LENET5_BUILDER, "--weights", str(weights), "--data", "mnist", "--recipe", "int8", "--out", str(run),
                     "--no-latency", "--no-report", "--quiet"]) == 0
    variant = run / "variants" / "int8-static-onnx.variant.json"
    out = tmp_path / "drift"
    assert cli.main(["explain", LENET5_BUILDER, "--weights", str(weights), "--data", "mnist", "--variant", str(variant),
                     "--methods", "occlusion", "--samples", "3", "--no-trust", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "explain.json").read_text())
    assert result["variant"]["original_weights"]["checked"] is True
    assert result["drift"]["occlusion"]["spearman"] > 0.5

    other = tmp_path / "other.safetensors"  # retrained weights of the same network
    model = zoo.load("lenet5")
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    zoo.weights.save_state_dict(model, other)
    common = ["--data", "mnist", "--variant", str(variant), "--methods", "occlusion", "--samples", "2"]
    _bad([LENET5_BUILDER, "--weights", str(other), *common], capsys, tmp_path / "never",
         "but the --weights given have sha256")
    _bad(["lenet5", "--variant", str(variant)], capsys, tmp_path / "never", f"was made from your model {LENET5_BUILDER}(), not lenet5; run `slimlens explain")
    assert json.loads(variant.read_text())["source"] == {"builder": LENET5_BUILDER}


def test_a_users_model_needs_its_dataset_and_nothing_of_the_zoos(tmp_path, capsys, trained_copy):
    (tmp_path / "wide.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 3))\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        out = tmp_path / "never"
        _bad([LENET5_BUILDER], capsys, out, f"{LENET5_BUILDER} is your own model: name the dataset it was trained on with --data (mnist or mnist-ge5)")
        _bad([LENET5_BUILDER, "--data", "cifar"], capsys, out, "--data cifar is not a bundled dataset; give one of mnist, mnist-ge5")
        _bad([LENET5_BUILDER, "--data", "mnist", "--weights-root", str(trained_copy)], capsys, out,
             "--weights-root holds retrained zoo models; your own model's weights come with --weights")
        _bad(["lenet5", "--data", "mnist"], capsys, out, "zoo model lenet5 knows its own, so leave --data out")
        _bad(["lenet5", "--weights", str(zoo.cards.weights_path("lenet5"))], capsys, out, "come from a folder with --weights-root")
        _bad(["wide:build", "--data", "mnist"], capsys, out, "gives outputs of shape (batch, 3) on mnist, which has 10 classes; it must give (batch, 10)")
    finally:
        sys.path.remove(str(tmp_path))


# Users' networks as a user writes them: a module on PYTHONPATH, imported by its package.module:function name
USER_NETS = '''
import torch
from torch import nn

from zoo.models.mlp import SimpleNet


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        raise RuntimeError("boom in forward")


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 1)

    def forward(self, x):
        return self.fc(x.flatten(1))[:, 0]


class SimpleNetLogit(SimpleNet):
    """simplenet without its sigmoid: the logit whose sigmoid simplenet gives."""

    def forward(self, x):
        return self.out(torch.relu(self.hidden(torch.flatten(self.norm(x), 1))))


def nan_net():
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        net[1].bias[3] = float("nan")  # one class's score: a diverged training run leaves such weights
    return net


def raises():
    return Raises()


def flat():
    return Flat()


def simplenet_logit():
    return SimpleNetLogit()


def simplenet_prob():
    return SimpleNet()


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


class ConvLSTM(nn.Module):
    """A CRNN: convolutions, then an LSTM over the feature map's columns, so the input's rows are not its time steps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.lstm = nn.LSTM(8 * 14, 16, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.conv(x)  # (batch, 8, 14, 14)
        steps = h.permute(0, 3, 1, 2).flatten(2)  # one step per column
        return self.head(self.lstm(steps)[0][:, -1])


def conv_lstm():
    torch.manual_seed(0)
    return ConvLSTM()
'''


@pytest.fixture(scope="module")
def user_nets(tmp_path_factory: pytest.TempPathFactory):
    """The module name of USER_NETS, importable while this test module runs."""
    import sys

    folder = tmp_path_factory.mktemp("user-nets")
    (folder / "explain_user_nets.py").write_text(USER_NETS)
    sys.path.insert(0, str(folder))
    yield "explain_user_nets"
    sys.path.remove(str(folder))
    sys.modules.pop("explain_user_nets", None)


def test_non_finite_outputs_are_refused_for_a_users_model_and_a_zoo_model(tmp_path, capsys, user_nets, trained_copy):
    out = tmp_path / "never"
    _bad([f"{user_nets}:nan_net", "--data", "mnist", "--samples", "2"], capsys, out,
         f"{user_nets}:nan_net gives NaN or infinite outputs for 256 of 256 mnist test digits; check its weights")

    def diverged(model):  # retrained weights that went to NaN in one output
        model.head.bias[0] = float("inf")

    root = _retrained(trained_copy, "seed-cnn", diverged)
    _bad(["seed-cnn", "--weights-root", str(root), "--samples", "2", "--methods", "occlusion"], capsys, out,
         "seed-cnn gives NaN or infinite outputs for 2 of the 2 inputs to explain (test #3 first); check its weights")


def test_a_users_model_that_raises_or_gives_flat_outputs_is_told_so(tmp_path, capsys, user_nets):
    out = tmp_path / "never"
    _bad([f"{user_nets}:raises", "--data", "mnist"], capsys, out,
         f"{user_nets}:raises raised an error on 256 of mnist's 1x28x28 test digits (RuntimeError: boom in forward); fix its forward")
    _bad([f"{user_nets}:flat", "--data", "mnist-ge5"], capsys, out, "gives outputs of shape (batch,) on mnist-ge5")


def test_maps_of_float_rounding_noise_count_as_all_zero_in_trust_and_drift(tmp_path):
    """On a blank image simplenet's occlusion map was 5.96e-8 everywhere (one float32 ulp of its output): drawn, scored, and called zero by drift alone."""
    from compress import TorchVariant
    from explain.run import Request, run

    Image.fromarray(np.zeros((28, 28), dtype=np.uint8), "L").save(tmp_path / "blank.png")
    same = TorchVariant(name="same", module=zoo.load("simplenet"), source={"zoo": "simplenet"})
    result = run(Request(model="simplenet", out=tmp_path / "out", methods=["occlusion", "integrated_gradients"], image=tmp_path / "blank.png", variant=same))
    for method in ("occlusion", "integrated_gradients"):
        assert result["methods"][method]["all_zero_maps"]["count"] == 1, method
        assert result["trust"][method]["deletion_auc"] is None and "all zero" in result["trust"][method]["not_measured"]
        assert result["drift"][method]["measured"] is False
    assert "rounding noise" in result["methods"]["occlusion"]["all_zero_maps"]["why"]
    # a digit's maps are far above the noise: nothing of them is cleared
    digit = run(Request(model="simplenet", out=tmp_path / "digit", methods=["occlusion"], samples=2, trust=False))
    assert "all_zero_maps" not in digit["methods"]["occlusion"]


def test_a_users_one_logit_model_is_scored_as_a_probability(tmp_path, user_nets):
    """simplenet without its sigmoid gives the logit of simplenet's probability: its trust figures must be simplenet's, not logit units."""
    argv = ["--methods", "occlusion", "--samples", "4", "--quiet"]
    assert cli.main(["explain", f"{user_nets}:simplenet_logit", "--weights", str(zoo.cards.weights_path("simplenet")), "--data", "mnist-ge5",
                     *argv, "--out", str(tmp_path / "logit")]) == 0
    assert cli.main(["explain", "simplenet", *argv, "--out", str(tmp_path / "zoo")]) == 0
    logit, twin = (json.loads((tmp_path / run / "explain.json").read_text()) for run in ("logit", "zoo"))
    assert logit["inputs"]["predictions"] == twin["inputs"]["predictions"]
    for auc in ("deletion_auc", "insertion_auc"):
        # a random pixel order scores the model's outputs alone: the same probabilities as simplenet's
        assert logit["trust"]["random_order"][auc] == pytest.approx(twin["trust"]["random_order"][auc], abs=1e-5), auc
        assert 0 <= logit["trust"]["occlusion"][auc] <= 1, auc  # the logit's own occlusion map ranks pixels its own way
    assert logit["trust"]["occlusion"]["deletion_auc"] < logit["trust"]["random_order"]["deletion_auc"]


def test_a_probability_variant_beside_a_logit_model_is_refused(tmp_path, capsys, user_nets):
    """compress makes no variant of a one-logit mnist-ge5 model; a hand-saved file of simplenet's sigmoid beside it would be read as a logit."""
    onnx_file = tmp_path / "simplenet.onnx"
    torch.onnx.export(zoo.load("simplenet"), torch.zeros(1, 1, 28, 28), onnx_file, dynamo=False, input_names=["input"],
                      output_names=["p"], dynamic_axes={"input": {0: "batch"}, "p": {0: "batch"}})
    saved = OnnxVariant(name="by-hand", artifact=onnx_file, source={}, steps=[]).save(tmp_path)
    weights = str(zoo.cards.weights_path("simplenet"))
    _bad([f"{user_nets}:simplenet_logit", "--weights", weights, "--data", "mnist-ge5", "--variant", str(saved), "--samples", "2"], capsys,
         tmp_path / "never", f"gives probabilities (all in [0, 1]) where {user_nets}:simplenet_logit gives logits (from ")
    # beside the model it was saved from, it is compared
    out = tmp_path / "ok"
    assert cli.main(["explain", f"{user_nets}:simplenet_prob", "--weights", weights, "--data", "mnist-ge5", "--variant", str(saved),
                     "--samples", "2", "--no-trust", "--methods", "occlusion", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "explain.json").read_text())["variant"]["agreement_with_original"] == 1.0


def test_a_users_recurrent_or_dense_model_gets_the_zoos_family(tmp_path, user_nets):
    """A builder holding an LSTM was family 'custom' and lost the per-time-step treatment the zoo's seed-lstm gets."""
    argv = ["--methods", "occlusion", "--samples", "2", "--no-trust", "--quiet"]
    assert cli.main(["explain", "zoo.models.lstm:seed_lstm", "--weights", str(zoo.cards.weights_path("seed-lstm")), "--data", "mnist",
                     *argv, "--out", str(tmp_path / "own")]) == 0
    assert cli.main(["explain", "seed-lstm", *argv, "--out", str(tmp_path / "zoo")]) == 0
    own, twin = (json.loads((tmp_path / run / "explain.json").read_text()) for run in ("own", "zoo"))
    assert own["model"]["family"] == "lstm" and own["lstm"] == twin["lstm"] and len(own["lstm"]["occlusion"]["per_step_mean"]) == 28
    for name in ("maps/test-3_occlusion.png", "grid.png"):  # drawn row by row, as the zoo's seed-lstm is
        assert (tmp_path / "own" / name).read_bytes() == (tmp_path / "zoo" / name).read_bytes(), name
    assert cli.main(["explain", f"{user_nets}:mlp", "--data", "mnist", *argv, "--out", str(tmp_path / "mlp")]) == 0
    assert json.loads((tmp_path / "mlp" / "explain.json").read_text())["model"]["family"] == "mlp"  # as softmax-regression's


def test_a_users_convolutional_lstm_is_explained_as_a_cnn(tmp_path, user_nets):
    """A conv → LSTM network was family lstm: its maps were summed per input row, which are not its time steps
    (its LSTM runs over the feature map's columns), and Grad-CAM, which its convolution supports, was no default."""
    out = tmp_path / "crnn"
    assert cli.main(["explain", f"{user_nets}:conv_lstm", "--data", "mnist", "--samples", "2", "--no-trust", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "explain.json").read_text())
    assert result["model"]["family"] == "cnn" and "lstm" not in result
    assert result["methods"]["gradcam"]["layer"] == "conv.1"


def test_an_unchecked_variant_that_mostly_disagrees_is_warned_about_even_when_quiet(tmp_path, capsys, lenet5_int8_run, trained_copy):
    """A variant from before weights were hashed, beside clearly other weights: agreement 0.0, and the only word of it was a progress line."""
    old = tmp_path / "old"
    shutil.copytree(lenet5_int8_run / "variants", old)
    variant = old / "int8-static-onnx.variant.json"
    meta = json.loads(variant.read_text())
    del meta["original_weights_sha256"]
    variant.write_text(json.dumps(meta))

    def shift_classes(model):  # every prediction moves to the next digit
        model.head.weight.copy_(model.head.weight.roll(1, 0))
        model.head.bias.copy_(model.head.bias.roll(1, 0))

    root = _retrained(trained_copy, "lenet5", shift_classes)
    out = tmp_path / "out"
    assert cli.main(["explain", "lenet5", "--variant", str(variant), "--weights-root", str(root), "--methods", "occlusion", "--samples", "2",
                     "--no-trust", "--out", str(out), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "cannot be checked" in warnings[0], warnings
    assert "agrees with lenet5's predictions on only 0% of the 2 inputs" in warnings[1] and "pass the --weights-root it was made with" in warnings[1]
    recorded = json.loads((out / "explain.json").read_text())["variant"]
    assert recorded["agreement_with_original"] == 0.0 and [f"warning: {w}" for w in recorded["warnings"]] == warnings


def test_a_builders_own_initialisation_is_named_when_its_variants_weights_differ(tmp_path, capsys):
    from compress import TorchVariant

    saved = TorchVariant(name="copy", module=zoo.load("lenet5"), source={"builder": LENET5_BUILDER},
                         original_weights_sha256=zoo.card("lenet5").weights["sha256"]).save(tmp_path / "variant")
    _bad([LENET5_BUILDER, "--data", "mnist", "--variant", str(saved), "--samples", "2"], capsys, tmp_path / "never",
         f"but no --weights was given, so {LENET5_BUILDER}() is explained with the weights it builds itself (sha256 ")
    out = tmp_path / "ok"  # with the weights it was made from, it is compared and nothing is warned
    assert cli.main(["explain", LENET5_BUILDER, "--weights", str(zoo.cards.weights_path("lenet5")), "--data", "mnist", "--variant", str(saved),
                     "--methods", "occlusion", "--samples", "2", "--no-trust", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "explain.json").read_text())["variant"]["warnings"] == [] and capsys.readouterr().err == ""


def test_a_variant_of_the_model_explained_needs_no_trust_code(tmp_path, capsys, user_nets):
    """Its builder is the MODEL argument, already imported and called: --trust-code guards other code only."""
    from compress import TorchVariant

    weights = zoo.cards.weights_path("simplenet")
    saved = TorchVariant(name="copy", module=zoo.load("simplenet"), source={"builder": f"{user_nets}:simplenet_prob"},
                         original_weights_sha256=zoo.card("simplenet").weights["sha256"]).save(tmp_path / "variant")
    out = tmp_path / "ok"
    assert cli.main(["explain", f"{user_nets}:simplenet_prob", "--weights", str(weights), "--data", "mnist-ge5", "--variant", str(saved),
                     "--methods", "occlusion", "--samples", "2", "--no-trust", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "explain.json").read_text())["variant"]["agreement_with_original"] == 1.0
    _bad([f"{user_nets}:simplenet_logit", "--weights", str(weights), "--data", "mnist-ge5", "--variant", str(saved)], capsys,
         tmp_path / "never", f"rebuilds its architecture by calling {user_nets}:simplenet_prob(), code named by the file; pass --trust-code")


def test_repeated_indices_and_samples_beside_indices_or_an_image_are_refused(tmp_path, capsys):
    """--indices 3,3,3 wrote one map over another and scored drift's floor on an image against itself; --samples beside them was ignored."""
    out = tmp_path / "never"
    _bad(["seed-cnn", "--indices", "3,7,3"], capsys, out, "index 3 is given more than once in --indices; give each index once")
    _bad(["seed-cnn", "--indices", "2-5,4"], capsys, out, "index 4 is given more than once")
    _bad(["seed-cnn", "--indices", "3,4", "--samples", "2"], capsys, out, "use --samples or --indices, not both")
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8), "L").save(tmp_path / "digit.png")
    _bad(["seed-cnn", "--image", str(tmp_path / "digit.png"), "--samples", "8"], capsys, out, "use --samples or --image, not both")


def test_a_compress_runs_missing_files_and_its_folder_name_what_to_do(tmp_path, capsys, lenet5_int8_run):
    run = tmp_path / "run"
    shutil.copytree(lenet5_int8_run, run)
    out = tmp_path / "never"
    _bad(["lenet5", "--variant", str(run)], capsys, out,
         f"{run} is a slimlens compress run folder; its variants are in {run / 'variants'}/: name one *.variant.json file there, e.g. ")
    remake = f"re-run the slimlens compress command that made it (recorded as \"command\" in {run / 'results.json'})"
    for meta, removed in (("int8-static-onnx", "int8-static-onnx.onnx"), ("int8-dynamic", "int8-dynamic.safetensors"),
                          ("int8-dynamic-onnx", "int8-dynamic-onnx.stand-in.safetensors")):
        (run / "variants" / removed).unlink()
        _bad(["lenet5", "--variant", str(run / "variants" / f"{meta}.variant.json")], capsys, out, f"{removed}, the ")
        _bad(["lenet5", "--variant", str(run / "variants" / f"{meta}.variant.json")], capsys, out, f"is missing; {remake}")


def test_a_variant_of_this_very_model_that_cannot_run_is_not_called_another_models(tmp_path):
    """QA: a pruned variant of the model being explained that failed on its inputs was told to be explained beside the
    model it was compressed from, which it already was."""
    from compress import TorchVariant
    from explain.errors import ExplainError
    from explain.run import Request, run

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("Given groups=16, expected weight to be at least 16 at dimension 0")

    for source, advice in (({"zoo": "seed-cnn"}, "it was made from seed-cnn, so its files or seed-cnn's code changed since"),
                           ({}, "explain it beside the model it was compressed from")):
        variant = TorchVariant(name="broken", module=Broken(), source=source)
        with pytest.raises(ExplainError, match="cannot take seed-cnn's inputs") as refused:
            run(Request(model="seed-cnn", out=tmp_path / "out", methods=["saliency"], samples=2, variant=variant, trust=False))
        assert advice in str(refused.value)


def test_a_users_package_in_the_current_folder_is_found_as_python_m_finds_it(tmp_path, monkeypatch, capsys):
    """README walkthrough: `slimlens explain mypkg.nets:build` run beside mypkg/ said 'No module named mypkg', since a
    console script's import path, unlike `python -m`'s, leaves the current folder out."""
    import sys

    (tmp_path / "walkpkg").mkdir()
    (tmp_path / "walkpkg" / "__init__.py").write_text("")
    (tmp_path / "walkpkg" / "nets.py").write_text("from zoo.models.lenet import lenet5 as build\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    argv = ["explain", "walkpkg.nets:build", "--weights", str(zoo.cards.weights_path("lenet5")), "--data", "mnist",
            "--methods", "saliency", "--samples", "1", "--no-trust", "--quiet", "--out", "out"]
    try:
        assert cli.main(argv) == 0, capsys.readouterr().err
    finally:  # the package lives in this test's folder only
        sys.modules.pop("walkpkg.nets", None)
        sys.modules.pop("walkpkg", None)
    assert (tmp_path / "out" / "explain.json").is_file()
    assert str(tmp_path) not in sys.path  # the folder served that import only
    capsys.readouterr()
    assert cli.main(["explain", "nowherepkg.nets:build", *argv[2:-1], "again"]) == 2  # the error says where a builder is looked for
    assert "importable from the current folder or from PYTHONPATH" in capsys.readouterr().err


def test_a_method_that_fails_the_randomisation_check_is_warned_about_even_when_quiet(tmp_path, capsys):
    """README walkthrough: integrated gradients failed the check on seed-cnn ('an edge detector of the input') and only
    explain.json said so."""
    out = tmp_path / "out"
    assert cli.main(["explain", "seed-cnn", "--methods", "integrated_gradients,occlusion", "--samples", "4", "--out", str(out), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    trust = json.loads((out / "explain.json").read_text())["trust"]
    flagged = [m for m in ("integrated_gradients", "occlusion") if trust[m]["randomisation_flagged"]]
    assert flagged and warnings == [f"warning: {m}: fails the model-randomisation check: {trust[m]['randomisation']['verdict']}" for m in flagged]
