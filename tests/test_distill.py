"""Distillation on real zoo models with tiny budgets: the student, its alone-baseline, and the derived architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from compress.context import data_for
from compress.distill import DistillConfig, _Features, distill, slimmer
from compress.finetune import finetune
from zoo.errors import SlimlensError
from zoo.models.lstm import RowLSTM
from zoo.models.resnet import ResNetMNIST


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_distill_returns_student_and_alone_baseline_on_same_architecture():
    teacher = zoo.load("seed-cnn")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = data_for("seed-cnn")
    out = distill(teacher, DistillConfig(width=0.25, epochs=0.3, hint_weight=0.5), data)
    student, alone = out["student"].module, out["alone"].module
    assert list(out) == ["student", "alone"]
    assert _params(student) == _params(alone) < _params(teacher) / 10
    assert [p.shape for p in student.parameters()] == [p.shape for p in alone.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), alone.parameters()))  # trained differently
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the teacher is untouched
    assert not student.training and not any(m._forward_hooks for m in student.modules())  # no hint hook left behind
    batch = data.test.images[:8]
    assert student(batch).shape == alone(batch).shape == (8, 10)
    assert out["student"].source["zoo"] == "seed-cnn"


def test_distill_self_student_fine_tunes_the_incoming_model():
    data = data_for("simplenet")
    model = zoo.load("simplenet")
    out = distill(model, DistillConfig(student="self", epochs=0.5, lr=1e-3), data)
    assert _params(out["student"].module) == _params(model)
    assert data.evaluate(out["student"])["accuracy"] > 0.85  # KD from itself keeps a binary classifier working


def test_slimmer_architectures_for_resnet_and_lstm():
    resnet, shape = slimmer(ResNetMNIST(), 0.25, torch.rand(2, 1, 28, 28))
    assert shape == {"widths": [8, 16, 32]} and _params(ResNetMNIST()) / _params(resnet) > 10
    lstm, shape = slimmer(RowLSTM(), 0.25, torch.rand(2, 1, 28, 28))
    assert shape == {"hidden": 32} and lstm(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_a_discriminator_is_pruned_and_distilled_against_its_original():
    # no labels of its own: both students learn the original's logits on real digits and its generator's
    data = data_for("dcgan-d")
    assert data.matches_original and data.generated(4, torch.Generator().manual_seed(0)).shape == (4, 1, 28, 28)
    out = distill(zoo.load("dcgan-d"), DistillConfig(width=0.5, epochs=0.05), data)
    assert out["student"](data.example_input(3)).shape == out["alone"](data.example_input(3)).shape == (3, 1)
    # the baseline is copied, not retrained: retraining it from the same start reproduces the distilled student
    assert "same_training_as" in out["alone"].steps[0]
    teacher = zoo.load("dcgan-d")
    torch.manual_seed(data.seed)  # as distill seeds the student's initial weights
    fresh = slimmer(teacher, 0.5, data.example_input(2))[0]
    finetune(fresh, data, epochs=0.05, lr=DistillConfig().lr, teacher=teacher)
    for retrained, copied in zip(fresh.state_dict().values(), out["alone"].module.state_dict().values()):
        assert torch.allclose(retrained, copied, atol=1e-6)
    from compress.prune import PruneStructuredConfig, prune_structured

    original = zoo.load("dcgan-d")
    pruned = prune_structured(original, PruneStructuredConfig(ratio=0.5, steps=1, epochs=1.0), data)
    # A discriminator's "accuracy" sits near 0.5 at a GAN's equilibrium, so the bound is fidelity: its
    # logits on real and generated digits follow the original's (measured r = 0.61; re-drawn weights give ~0.1).
    images = torch.cat([data.test.images[:500], data.generated(500, torch.Generator().manual_seed(1))])
    with torch.no_grad():
        r = torch.corrcoef(torch.stack([original(images)[:, 0], pruned(images)[:, 0]]))[0, 1]
    assert r > 0.45


def test_a_distilled_lstm_student_learns_the_task():
    data = data_for("seed-lstm")
    out = distill(zoo.load("seed-lstm"), DistillConfig(width=0.25, epochs=3, lr=0.006, alpha=0.5), data)
    assert out["student"].module.lstm.hidden_size == 32
    # 3 epochs of 40 (the preset's budget, which reaches 0.96): far above chance (0.1) already
    assert data.evaluate(out["student"])["accuracy"] > 0.6 and data.evaluate(out["alone"])["accuracy"] > 0.6


def test_fine_tuning_clips_gradients_as_the_model_was_trained():
    assert data_for("seed-lstm").clip_grad_norm == zoo.spec("seed-lstm").recipe.extra["clip_grad_norm"] == 1.0
    assert data_for("resnet-mnist").clip_grad_norm is None


def test_mixup_blends_images_and_targets_alike():
    from compress.finetune import mix, mixed_targets

    images, labels = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    mixed, perm = mix(images, 0.7, torch.Generator().manual_seed(0))
    assert torch.equal(perm, torch.randperm(6, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(mixed, 0.7 * images + 0.3 * images[perm])
    targets = mixed_targets(labels, perm, 0.7, 10)
    expected = 0.7 * torch.nn.functional.one_hot(labels, 10) + 0.3 * torch.nn.functional.one_hot(labels[perm], 10)
    assert torch.allclose(targets, expected) and torch.allclose(targets.sum(1), torch.ones(6))
    binary = mixed_targets(torch.tensor([0, 1, 0, 1, 0, 1]), perm, 0.7, None)
    assert binary.shape == (6,) and all(min(abs(b - v) for v in (0.0, 0.3, 0.7, 1.0)) < 1e-6 for b in binary.tolist())


def test_distill_with_mixup_trains_both_students_on_blends():
    data = data_for("seed-cnn")
    out = distill(zoo.load("seed-cnn"), DistillConfig(width=0.5, epochs=1.0, mixup=0.4), data)
    plain = distill(zoo.load("seed-cnn"), DistillConfig(width=0.5, epochs=1.0), data)
    assert not torch.equal(out["alone"].module.head.weight, plain["alone"].module.head.weight)
    assert data.evaluate(out["student"])["accuracy"] > 0.7 and data.evaluate(out["alone"])["accuracy"] > 0.7
    with pytest.raises(SlimlensError, match="set mixup = 0"):  # an autoencoder's digits carry no labels to blend
        distill(zoo.load("seed-autoencoder"), DistillConfig(width=0.5, epochs=0.1, mixup=0.4), data_for("seed-autoencoder"))


class FiveClasses(nn.Module):
    """A user's classifier with five outputs, which no zoo model has."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_student_keeps_the_output_layer_a_model_defines_first(head_first):
    data = data_for("tests:HeadFirst", data="mnist")
    example = data.example_input(2)
    assert _Features(head_first(), example).dim == 64  # the hint reads the head's input, not the body's
    out = distill(head_first(), DistillConfig(width=0.5, epochs=0.02, hint_weight=0.5), data)
    student = out["student"].module
    assert (student.body[1].out_features, student.head.out_features) == (32, 10)
    assert student(example).shape == out["alone"](example).shape == (2, 10)


def test_a_zoo_student_or_teacher_must_fit_the_task_and_shapes():
    data = data_for("seed-cnn")
    classifiers = "seed-cnn, lenet5, resnet-mnist, seed-lstm, softmax-regression"
    with pytest.raises(SlimlensError, match=f"student = 'dcgan-g' does not fit seed-cnn: it is a generation model, "
                                            f"seed-cnn a classification one; students that fit: {classifiers}$"):
        distill(zoo.load("seed-cnn"), DistillConfig(student="dcgan-g", epochs=0.01), data)
    with pytest.raises(SlimlensError, match="teacher = 'dcgan-d' does not fit seed-cnn: it is a discrimination model"):
        distill(zoo.load("seed-cnn"), DistillConfig(teacher="dcgan-d", epochs=0.01), data)
    with pytest.raises(SlimlensError, match=r"teacher = 'seed-cnn' does not fit tests:FiveClasses: it outputs shape \(10,\) "
                                            r"where tests:FiveClasses outputs \(5,\); teachers that fit: none in the zoo"):
        distill(FiveClasses(), DistillConfig(teacher="seed-cnn", epochs=0.01), data_for("tests:FiveClasses", data="mnist"))
    out = distill(zoo.load("seed-cnn"), DistillConfig(student="softmax-regression", teacher="lenet5", epochs=0.01), data)
    assert out["student"](data.example_input(2)).shape == (2, 10) and out["student"].source == {"zoo": "softmax-regression"}


@pytest.mark.parametrize("setting", ["temperature", "hint_weight", "alpha", "lr", "epochs", "width", "mixup"])
def test_nan_settings_are_refused(setting):
    with pytest.raises(ValueError, match=f"{setting} must .*got nan"):
        DistillConfig(**{setting: float("nan")})


@pytest.mark.parametrize("setting, message", [({"student": "resnet-mnsit"}, "student='resnet-mnsit' must be 'auto', 'self' or a zoo model"),
                                              ({"teacher": "lenet"}, "teacher='lenet' must be empty")])
def test_unknown_zoo_names_are_refused_when_the_config_is_made(setting, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**setting)


@pytest.mark.parametrize("setting", ["epochs", "lr"])
def test_an_infinite_budget_is_refused(setting):
    with pytest.raises(ValueError, match=f"{setting} must be positive and finite, got inf"):
        DistillConfig(**{setting: float("inf")})
