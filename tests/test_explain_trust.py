"""Trust and drift: faithfulness curves, Captum's metrics, the randomisation sanity check, map drift."""

from __future__ import annotations

import copy

import pytest
import torch

import explain
import zoo
from explain import drift, trust
from explain.inputs import spread_indices


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = zoo.dataset("mnist", "test")
    idx = spread_indices(data.labels, 10)  # one image of each digit
    return data.images[idx], data.labels[idx]


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    other = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in other.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return other


def test_deletion_and_insertion_curves(cnn, digits):
    x, y = digits
    maps = explain.attribute(cnn, x, y, "integrated_gradients", baselines=0.0, n_steps=20)
    curves = trust.deletion_insertion(cnn, x, maps, y, steps=14)
    assert curves["deletion"].shape == (10, 15) and curves["fractions"][0] == 0 and curves["fractions"][-1] == 1
    with torch.no_grad():
        assert torch.allclose(curves["deletion"][:, 0], cnn(x).softmax(1)[torch.arange(10), y], atol=1e-5)
    noise = trust.deletion_insertion(cnn, x, torch.rand(x.shape, generator=torch.Generator().manual_seed(0)), y, steps=14)
    # a real explanation removes the evidence faster and restores it faster than a random order
    assert curves["deletion_auc"].mean() < noise["deletion_auc"].mean() - 0.2
    assert curves["insertion_auc"].mean() > noise["insertion_auc"].mean() + 0.2


def test_trust_metrics_default_to_the_predicted_class_as_attribute_does(cnn, digits):
    x = digits[0][1:4]  # digits 1, 2, 3: class 0 is the wrong target for every one
    with torch.no_grad():
        predicted = cnn(x).argmax(1)
    maps = explain.attribute(cnn, x, method="integrated_gradients", baselines=0.0, n_steps=20)
    assert torch.equal(maps, explain.attribute(cnn, x, predicted, "integrated_gradients", baselines=0.0, n_steps=20))
    default, explicit = trust.deletion_insertion(cnn, x, maps, steps=8), trust.deletion_insertion(cnn, x, maps, predicted, steps=8)
    assert torch.equal(default["insertion_auc"], explicit["insertion_auc"])
    assert default["insertion_auc"].mean() > trust.deletion_insertion(cnn, x, maps, 0, steps=8)["insertion_auc"].mean() + 0.4
    assert torch.equal(trust.infidelity_score(cnn, x, maps, n_perturb_samples=4), trust.infidelity_score(cnn, x, maps, predicted, n_perturb_samples=4))


def test_captum_metrics_and_completeness(cnn, digits):
    x, y = digits[0][:3], digits[1][:3]
    maps = explain.attribute(cnn, x, y, "saliency")
    assert torch.isfinite(trust.infidelity_score(cnn, x, maps, y, n_perturb_samples=4)).all()
    assert (trust.sensitivity(cnn, x, y, "saliency", n_perturb_samples=2) >= 0).all()
    delta = trust.convergence_delta(cnn, x, y, baselines=0.0, n_steps=50)
    assert delta["mean_relative_delta"] < 0.05  # IG's attributions add up to F(x) - F(baseline)


def test_randomisation_passes_saliency_and_flags_guided_backprop(cnn, digits):
    x, y = digits[0][:6], digits[1][:6]
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    saliency = trust.randomisation_test(cnn, x, y, "saliency")
    guided = trust.randomisation_test(cnn, x, y, "guided_backprop")
    assert saliency["layers"][0] == "head"  # cascading from the top layer
    assert not saliency["flagged"] and guided["flagged"], (saliency["ssim"], guided["ssim"])
    assert "edge detector" in guided["verdict"]
    assert guided["final_ssim"] > guided["chance_ssim"] + trust.CHANCE_MARGIN  # structure beyond the digit's outline
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())  # a copy was randomised


def test_randomisation_of_maps_that_only_keep_the_digits_outline_is_inconclusive(cnn, digits):
    # occlusion with a black baseline is zero off the digit for any weights: its randomised maps keep the
    # outline, and noise confined to the digit's pixels scores about as high, so the test cannot tell
    x, y = digits[0][:6], digits[1][:6]
    occlusion = trust.randomisation_test(cnn, x, y, "occlusion")
    assert occlusion["final_ssim"] > occlusion["threshold"] and occlusion["inconclusive"] and not occlusion["flagged"], occlusion
    assert f"{occlusion['chance_ssim']:.2f}" in occlusion["verdict"] and "cannot tell" in occlusion["verdict"]


def test_drift_with_itself_is_perfect_and_with_a_randomised_copy_low(cnn, digits):
    x, y = digits
    maps = explain.attribute(cnn, x, y, "saliency")
    same = drift.compare(maps, maps.clone(), y)
    assert same["mean"] == {"spearman": 1.0, "top10_iou": 1.0, "ssim": pytest.approx(1.0, abs=1e-5)}
    assert set(same["per_class"]) == {str(d) for d in range(10)}
    other = drift.compare(maps, explain.attribute(_randomised(cnn), x, y, "saliency"), y, worst=3)
    assert other["mean"]["spearman"] < 0.6 and other["mean"]["top10_iou"] < 0.3 and other["mean"]["ssim"] < 0.3
    worst = other["most_drifting"]
    assert len(worst) == 3 and worst[0]["spearman"] <= worst[1]["spearman"] <= worst[2]["spearman"]


def test_rank_correlation_and_iou_basics():
    a = torch.randn(4, 1, 28, 28)
    assert torch.allclose(drift.rank_correlation(a, 3 * a + 1, absolute=False), torch.ones(4))
    assert torch.allclose(drift.rank_correlation(a, -a, absolute=False), -torch.ones(4))
    assert torch.equal(drift.topk_iou(a, a), torch.ones(4))
    zeros = torch.zeros(2, 1, 28, 28)
    assert torch.equal(drift.rank_correlation(zeros, zeros), torch.ones(2))


def test_trust_metrics_score_a_model_left_in_training_mode_as_in_eval_mode(digits):
    """resnet-mnist has BatchNorm: scored in training mode, its infidelity read 9.65 instead of 0.45."""
    model = zoo.load("resnet-mnist")
    x, y = digits[0][:4], digits[1][:4]
    maps = explain.attribute(model, x, y, "saliency")
    evaluated = trust.deletion_insertion(model, x, maps, y)["deletion_auc"], trust.infidelity_score(model, x, maps, y)
    model.train()
    running = [b.clone() for b in model.buffers()]
    trained = trust.deletion_insertion(model, x, maps, y)["deletion_auc"], trust.infidelity_score(model, x, maps, y)
    assert torch.allclose(trained[0], evaluated[0]) and torch.allclose(trained[1], evaluated[1])
    assert model.training and all(torch.equal(a, b) for a, b in zip(running, model.buffers()))  # mode and statistics as they were


def test_a_one_output_model_is_explained_and_scored_for_the_class_it_predicts():
    """simplenet gives P(digit >= 5): where it says 'digit<5', the map is evidence for that, i.e. for 1 - p."""
    model = zoo.load("simplenet")
    x = zoo.dataset("mnist-ge5", "test").images[:8]
    with torch.no_grad():
        p = model(x)[:, 0]
    negative = p < 0.5
    assert negative.any() and (~negative).any()
    of_output = explain.attribute(model, x, 0, "input_x_gradient")  # Captum's index 0: the output itself, for every sample
    maps = explain.attribute(model, x, method="input_x_gradient")  # the default: the predicted class
    assert torch.allclose(maps[~negative], of_output[~negative]) and torch.allclose(maps[negative], -of_output[negative])
    curves = trust.deletion_insertion(model, x, maps, steps=4)
    assert torch.allclose(curves["deletion"][:, 0], torch.where(negative, 1 - p, p), atol=1e-6)  # the predicted class's probability
    # integrated gradients of the predicted class add up to its own score's change, not the positive output's
    delta = trust.convergence_delta(model, x, baselines=0.0, n_steps=64)
    assert delta["mean_relative_delta"] < 0.05


def test_a_discriminators_logit_is_scored_as_the_probability_of_its_predicted_class():
    model = zoo.load("dcgan-d")
    x = torch.cat([zoo.dataset("mnist", "test").images[:3], zoo.load("dcgan-g")(zoo.latents(3, 0)).detach()])
    with torch.no_grad():
        z = model(x)[:, 0]
    target = explain.BinaryTarget((z >= 0).long())  # a logit: the other class is its negation
    maps = explain.attribute(model, x, target, "saliency")
    curves = trust.deletion_insertion(model, x, maps, target, steps=4, output="sigmoid")
    assert torch.allclose(curves["deletion"][:, 0], torch.sigmoid(z.abs()), atol=1e-6)
    assert torch.isfinite(trust.infidelity_score(model, x, maps, target, n_perturb_samples=2)).all()
    assert (trust.sensitivity(model, x[:2], target[:2], "saliency", n_perturb_samples=2) >= 0).all()


def test_drift_floor_is_the_same_similarity_between_maps_of_different_digits(cnn, digits):
    x, y = digits
    maps = explain.attribute(cnn, x, y, "occlusion", **explain.default_options("occlusion"))
    floor = drift.floor(maps, maps.clone())
    # a map beside another digit's map, by the same three measures: shared blank background keeps IoU and SSIM well above 0
    shifted = drift.compare(maps, maps.roll(1, dims=0))["mean"]
    assert floor["pairs"] == 10 * drift.FLOOR_SHIFTS and set(floor) >= {"spearman", "top10_iou", "ssim"}
    assert abs(floor["ssim"] - shifted["ssim"]) < 0.15 and 0.1 < floor["ssim"] < 0.9 and floor["top10_iou"] < 0.5
    assert drift.compare(maps, maps)["mean"]["ssim"] > floor["ssim"] + 0.1
    assert drift.floor(maps[:1], maps[:1]) is None  # one sample has no other to pair with


@pytest.mark.parametrize("method", ["lime", "gradient_shap", "noise_tunnel:saliency"])
def test_sensitivity_of_a_sampling_method_measures_the_input_not_its_own_draws(method):
    # every call draws the same masks, baselines or noise, so an input moved by 1e-8 moves the map by about as little
    # (at 1e-6 a gradient can already cross a ReLU's kink: GradientSHAP jumped by 0.06 on one digit, a real discontinuity)
    model, data = zoo.load("seed-cnn"), zoo.dataset("mnist", "test")
    x, y = data.images[:2], torch.as_tensor(data.labels[:2])
    still = trust.sensitivity(model, x, y, method, radius=1e-8, n_perturb_samples=2)
    moved = trust.sensitivity(model, x, y, method, radius=0.05, n_perturb_samples=2)
    assert (still < 0.01).all(), still  # LIME's own draws alone scored 1.3 to 1.6 here
    assert (moved > still).all()


def test_a_floor_says_how_it_was_taken_in_plain_words_or_why_there_is_none():
    """QA: "the next 1 other inputs", and with one sample a null floor with no reason while the figure left it out."""
    maps = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    hows = {n: drift.floor_record(maps[:n], maps[:n])["how"] for n in (2, 3, 4, 10)}
    assert "the variant's map of the other input:" in hows[2] and "both other inputs:" in hows[3] and "all 3 other inputs:" in hows[4]
    assert f"the next {drift.FLOOR_SHIFTS} other inputs (cyclically)" in hows[10] and not any("1 other inputs" in h for h in hows.values())
    none = drift.floor_record(maps[:1], maps[:1])
    assert none["spearman"] is None and none["pairs"] == 0 and none["unavailable"].startswith("needs at least two compared inputs")
    mean = drift.compare(maps[:1], maps[:1])["mean"]
    assert drift.headline(mean, none) == "Spearman 1.00, top-10% IoU 1.00, SSIM 1.00 (no floor: needs at least two compared inputs)"
    floor = drift.floor_record(maps[:4], maps[:4])
    assert drift.headline(mean, floor).startswith(f"Spearman 1.00 (floor {floor['spearman']:.2f}), ")
    assert drift.figure_title("occlusion", mean, none, 1, 1).startswith("occlusion drift, mean of 1:\n")
    assert drift.figure_title("feature_ablation", mean, floor, 3, 4).startswith("feature_ablation drift, mean of 3 of 4 (1 all-zero map left out):\n")


def test_faithfulness_change_says_when_it_covers_fewer_inputs_than_trust(cnn, digits):
    """QA: drift's faithfulness.original (deletion 0.3881) differed from trust's 0.3839 for the same method and model,
    because drift leaves out an input where the variant's map alone is all zero and trust does not."""
    x, y = digits[0][:4], digits[1][:4]
    maps = explain.attribute(cnn, x, y, "saliency")
    on_all = trust.deletion_insertion(cnn, x, maps, y)["deletion_auc"]
    both = trust.faithfulness_change(cnn, cnn, x[:3], maps[:3], maps[:3], y[:3], of=4)
    assert both["original"]["deletion_auc"] == pytest.approx(float(on_all[:3].mean())) != pytest.approx(float(on_all.mean()))
    assert both["change"] == {"deletion_auc": 0.0, "insertion_auc": 0.0} and both["samples"].startswith("the 3 of 4 inputs where neither map is all zero")
    assert "samples" not in trust.faithfulness_change(cnn, cnn, x, maps, maps, y, of=4)
