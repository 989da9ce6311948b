"""Knowledge distillation: a slimmer student learns from the teacher's softened logits and features.

Logit distillation follows Hinton et al. (2015): ``alpha`` weighs the KL divergence between the
temperature-softened teacher and student outputs (scaled by T² so its gradients keep their size),
``1 - alpha`` the ordinary task loss on the labels. The hint loss follows FitNets (Romero et al.,
2015), on the penultimate features (the input of the last linear layer) through a learned linear
regressor from the student's width to the teacher's.

The result always holds two students: ``student`` (distilled) and ``alone`` — the same architecture
from the same initial weights, trained on the task loss alone with the same data order, augmentation,
epochs and learning rate — so a gain from distillation is measured, not assumed.

>>> from compress.distill import DistillConfig, distill
>>> out = distill(zoo.load("resnet-mnist"), DistillConfig(width=0.25, epochs=1), data_for("resnet-mnist"))  # doctest: +SKIP
>>> out["student"].module, out["alone"].module                                                             # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compress.context import CompressionData
from compress.finetune import finetune, task_loss
from compress.steps import register_step
from compress.variant import TorchVariant
from zoo.errors import SlimlensError
from zoo.footprint import module_params


@dataclass(frozen=True)
class DistillConfig:
    """Distil into a slimmer student (Hinton logit KD, optional FitNets hint), beside the same student trained alone."""

    student: str = "auto"  # "auto": the model's own architecture at `width`; "self": the incoming model; or a zoo model name
    width: float = 0.25  # channel / hidden-unit fraction of an "auto" student
    teacher: str = ""  # a zoo model name; empty: the original model of the run (or the incoming one)
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target loss; 1 - alpha goes to the labels
    hint_weight: float = 0.0  # weight of the FitNets hint loss on penultimate features; 0 turns it off
    epochs: float = 10.0
    lr: float = 3e-3
    batch_size: int = 64
    augment: bool = True
    mixup: float = 0.0  # mixup's Beta concentration for both students (0: off); the teacher labels the blended images

    strength_field: ClassVar[str] = "width"
    search_values: ClassVar[tuple] = (0.5, 0.375, 0.25, 0.125)

    def __post_init__(self) -> None:
        if not 0 < self.width <= 1:
            raise ValueError(f"width must be in (0, 1], got {self.width}")
        if not self.temperature > 0:  # `not >` so NaN fails too
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.mixup >= 0:
            raise ValueError(f"mixup must be 0 (off) or a positive Beta concentration such as 0.4, got {self.mixup}")
        if not self.hint_weight >= 0:
            raise ValueError(f"hint_weight must be >= 0 (0 turns the hint loss off), got {self.hint_weight}")
        for name in ("epochs", "lr", "batch_size"):
            if not 0 < getattr(self, name) < math.inf:  # inf fails too: a budget that would never finish
                raise ValueError(f"{name} must be positive and finite, got {getattr(self, name)}")
        import zoo

        # checked when the recipe is read, not when the step is reached after minutes of earlier steps
        models = zoo.list_models()
        if self.student not in ("auto", "self", *models):
            raise ValueError(f"student={self.student!r} must be 'auto', 'self' or a zoo model ({', '.join(models)})")
        if self.teacher and self.teacher not in models:
            raise ValueError(f"teacher={self.teacher!r} must be empty (the run's original) or a zoo model ({', '.join(models)})")


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _reset(model: nn.Module) -> nn.Module:
    """Fresh initial weights everywhere, so a student starts from scratch like its baseline."""
    for sub in model.modules():
        if sub is not model and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return model


def slimmer(model: nn.Module, width: float, example: torch.Tensor) -> tuple[nn.Module, dict]:
    """A freshly initialised copy of ``model``'s architecture with ``width`` of its channels (and how to rebuild it)."""
    from zoo.models.lstm import RowLSTM
    from zoo.models.resnet import ResNetMNIST

    if isinstance(model, ResNetMNIST):
        widths = tuple(_scaled(layer[0].conv2.out_channels, width) for layer in (model.layer1, model.layer2, model.layer3))
        return ResNetMNIST(widths=widths, num_classes=model.head.out_features), {"widths": list(widths)}
    if isinstance(model, RowLSTM):
        hidden = _scaled(model.lstm.hidden_size, width)
        return RowLSTM(hidden=hidden, num_classes=model.head.out_features), {"hidden": hidden}
    return _slimmer_by_pruning(model, width, example), {"width": width}


def _slimmer_by_pruning(model: nn.Module, width: float, example: torch.Tensor) -> nn.Module:
    # Any other architecture: Torch-Pruning's dependency graph removes the same fraction of channels
    # from every coupled layer (the output layer keeps its classes); the weights are then re-drawn.
    import torch_pruning as tp

    from compress.prune import channel_pruner, check_output_shape, output_layer, output_shape, refuse_untraceable_recurrent  # prune imports this module

    student = copy.deepcopy(model).eval()
    head, shape = output_layer(student, example), output_shape(student, example)
    refuse_untraceable_recurrent(student, type(model).__name__, "distill cannot derive a narrower student from",
                                 "name a smaller zoo model as student")
    try:
        channel_pruner(student, example, tp.importance.MagnitudeImportance(p=1), 1 - width, head).step()
    except Exception as exc:  # Torch-Pruning raises plain errors on graphs it cannot trace
        raise SlimlensError(f"cannot derive a slimmer {type(model).__name__} student ({exc}); name a zoo model as student") from None
    check_output_shape(student, example, shape, "deriving a slimmer student", "name a zoo model as student")
    return _reset(student)


class _Features:
    """Captures the input of a module's last linear layer: the penultimate features for the hint loss."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        from compress.prune import output_layer  # prune imports this module

        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise SlimlensError(f"{type(model).__name__} has no linear head for the hint loss; set hint_weight = 0")
        last = output_layer(model, example, (nn.Linear,))
        self.value: torch.Tensor | None = None
        self.dim = last.in_features
        self._handle = last.register_forward_hook(self._keep)

    def remove(self) -> None:
        """Detach the hook, so the trained student carries nothing of the training."""
        self._handle.remove()

    def _keep(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.value = args[0]


class _Hinted(nn.Module):
    """The student plus its hint regressor, so the shared fine-tuning loop optimises both."""

    def __init__(self, student: nn.Module, regressor: nn.Module):
        super().__init__()
        self.student = student
        self.regressor = regressor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def soft_target_loss(data: CompressionData, student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's T²-scaled divergence between softened outputs (MSE for tasks whose outputs are not class scores)."""
    t = temperature
    if data.task == "classification":
        return F.kl_div(F.log_softmax(student_out / t, 1), F.log_softmax(teacher_out / t, 1), reduction="batchmean", log_target=True) * t * t
    if data.task == "binary-classification":  # the models output a probability: soften its logit
        s_logit = torch.logit(student_out.clamp(1e-6, 1 - 1e-6))
        t_logit = torch.logit(teacher_out.clamp(1e-6, 1 - 1e-6))
        return F.binary_cross_entropy_with_logits(s_logit / t, torch.sigmoid(t_logit / t)) * t * t
    return F.mse_loss(student_out, teacher_out)


def _kd_loss(data: CompressionData, config: DistillConfig, hinted: _Hinted, student_feats: _Features | None,
             teacher_feats: _Features | None) -> Callable[..., torch.Tensor]:
    def loss(outputs: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        total = config.alpha * soft_target_loss(data, outputs, teacher_out, config.temperature)
        if config.alpha < 1:
            total = total + (1 - config.alpha) * task_loss(data, outputs, inputs, labels, teacher_out)
        if config.hint_weight > 0:
            total = total + config.hint_weight * F.mse_loss(hinted.regressor(student_feats.value), teacher_feats.value)
        return total

    return loss


def _input_misfit(name: str, data: CompressionData, example: torch.Tensor) -> str:
    """Why zoo model ``name`` cannot take the inputs of ``data``'s task, or "" if it can."""
    import zoo

    spec = zoo.spec(name)
    if spec.task != data.task:
        return f"is a {spec.task} model, {data.model_name} a {data.task} one"
    if tuple(spec.input_shape) != tuple(example.shape[1:]):
        return f"takes inputs of shape {tuple(spec.input_shape)}, {data.model_name} {tuple(example.shape[1:])}"
    return ""


def _output_misfit(candidate: nn.Module, data: CompressionData, example: torch.Tensor, expected: tuple[int, ...]) -> str:
    """Why ``candidate``'s outputs differ in shape from ``expected`` (the compressed model's), or "" if they do not."""
    from compress.prune import output_shape  # prune imports this module

    shape = output_shape(candidate, example)
    return f"outputs shape {shape[1:]} where {data.model_name} outputs {expected[1:]}" if shape != expected else ""


def _zoo_model(name: str, role: str, model: nn.Module, data: CompressionData) -> nn.Module:
    """Zoo model ``name`` as ``role`` (trained weights for a teacher), refused in one line unless its task and shapes fit ``model``'s."""
    import zoo
    from compress.prune import output_shape  # prune imports this module

    example = data.example_input(2)
    expected = output_shape(model, example)
    why, built = _input_misfit(name, data, example), None
    if not why:  # built once its inputs fit, and once only: a second build would shift the seeded RNG the student's weights come from
        built = zoo.load(name) if role == "teacher" else zoo.build(name)
        why = _output_misfit(built, data, example, expected)
    if why:
        fits = [n for n in zoo.list_models()
                if not _input_misfit(n, data, example) and not _output_misfit(zoo.build(n), data, example, expected)]
        raise SlimlensError(f"{role} = {name!r} does not fit {data.model_name}: it {why}; "
                            f"{role}s that fit: {', '.join(fits) if fits else 'none in the zoo'}")
    return built


def _teacher(config: DistillConfig, model: nn.Module, data: CompressionData, original: nn.Module | None) -> nn.Module:
    if config.teacher:
        return _zoo_model(config.teacher, "teacher", model, data)
    return copy.deepcopy(original if original is not None else model).eval()


def _student(config: DistillConfig, model: nn.Module, data: CompressionData) -> tuple[nn.Module, dict]:
    if config.student == "self":
        return copy.deepcopy(model), dict(data.source)
    if config.student == "auto":
        example = data.example_input(2)
        student, shape = slimmer(model, config.width, example)
        if module_params(student)["params"] >= module_params(model)["params"]:
            from compress.prune import output_layer  # prune imports this module

            head = output_layer(model, example)
            hidden = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d | nn.RNNBase) and m is not head]
            if not hidden:  # the output layer keeps its classes, so nothing is left to narrow
                raise SlimlensError(f"distill derives no smaller student from {data.model_name}: its only weighted layer is the output "
                                    "layer, which keeps its classes; name a smaller zoo model as student, or distill a model with hidden layers")
            # Torch-Pruning leaves a layer whole when the width would keep less than one channel of it
            narrowest = min(m.hidden_size if isinstance(m, nn.RNNBase) else m.weight.shape[1 if isinstance(m, nn.ConvTranspose2d) else 0]
                            for m in hidden)
            if narrowest * config.width >= 1:  # the width was not the cause: Torch-Pruning found nothing it could narrow
                raise SlimlensError(f"distill derives no smaller student from {data.model_name}: Torch-Pruning could not trace its "
                                    "layers to the output (a head reading a recurrent layer's final state h_n is one such case); "
                                    "name a smaller zoo model as student")
            suggestion = f", e.g. {2 / narrowest:.3g}" if 2 / narrowest < 1 else ""  # two channels of the narrowest layer kept
            raise SlimlensError(f"width={config.width} derives no smaller student from {data.model_name}: its narrowest layer has "
                                f"{narrowest} channels, of which it would keep less than one; choose a larger width{suggestion}")
        return student, {**data.source, "student": shape}
    return _zoo_model(config.student, "student", model, data), {"zoo": config.student}


@register_step("distill", DistillConfig)
def distill(model: nn.Module, config: DistillConfig, data: CompressionData, progress: Callable[[str], None] = lambda m: None,
            original: nn.Module | None = None) -> dict[str, TorchVariant]:
    """Distil ``model`` (or ``original``/``config.teacher``) into a student; also train that student alone on the same budget."""
    torch.manual_seed(data.seed)  # the student's initial weights depend on the run's seed only
    teacher = _teacher(config, model, data, original)
    student, source = _student(config, model, data)
    alone = copy.deepcopy(student)  # the same starting weights for the baseline

    hint = config.hint_weight > 0
    example = data.example_input(2)
    student_feats, teacher_feats = (_Features(student, example), _Features(teacher, example)) if hint else (None, None)
    hinted = _Hinted(student, nn.Linear(student_feats.dim, teacher_feats.dim) if hint else nn.Identity())
    budget = {"epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size, "augment": config.augment, "mixup": config.mixup}
    progress(f"distill: teacher {sum(p.numel() for p in teacher.parameters()):,} params → student {sum(p.numel() for p in student.parameters()):,}")
    start = time.perf_counter()
    finetune(hinted, data, teacher=teacher, loss_fn=_kd_loss(data, config, hinted, student_feats, teacher_feats),
             progress=lambda m: progress(f"distill (with teacher): {m}"), **budget)
    if hint:
        student_feats.remove()
        teacher_feats.remove()
    distilled_in, start = time.perf_counter() - start, time.perf_counter()
    alone_note: dict = {}
    if data.matches_original and not hint:
        # A generator or discriminator has no labels: its task loss is the same MSE to the original's
        # outputs as the soft-target loss, so from the same weights and data order the baseline's
        # training would repeat the distilled one step for step. Copy it rather than pay for it twice.
        alone.load_state_dict(student.state_dict())
        alone_note = {"same_training_as": "student (no labels: both match the original's outputs)"}
    else:
        # The baseline sees the teacher's outputs only where the task itself needs them (a generator's targets).
        finetune(alone, data, teacher=teacher if data.matches_original else None,
                 progress=lambda m: progress(f"distill (student alone): {m}"), **budget)
        # its record starts from the step's settings: say which of them this training did not use
        alone_note = {"temperature": None, "alpha": None, "hint_weight": None,
                      **({"trained_on": "the teacher's outputs, its task's targets"} if data.matches_original
                         else {"teacher": None, "trained_on": "the labels alone"})}
    alone_in = time.perf_counter() - start
    return {
        "student": TorchVariant(name="student", source=source, module=student.eval(), steps=[{"training_seconds": round(distilled_in, 2)}]),
        "alone": TorchVariant(name="student-alone", source=source, module=alone.eval(), steps=[{"training_seconds": round(alone_in, 2), **alone_note}]),
    }
