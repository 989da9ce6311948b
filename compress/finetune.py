"""One fine-tuning loop for every family, shared by pruning, quantization-aware training and distillation."""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.context import CompressionData
from zoo.errors import SlimlensError
from zoo.training import random_affine


BATCH_SIZE = 64  # fine-tuning batch unless a step asks for another


MAX_EPOCHS = 10_000


def check_budget(epochs: float, lr: float) -> None:
    """Raise a one-line SlimlensError for a fine-tuning budget no optimiser can use (checked when a recipe is parsed)."""
    # NaN and inf fail too, and so does a finite budget no run could finish (1e308 overflowed the step count)
    if not 0 <= epochs <= MAX_EPOCHS:
        raise SlimlensError(f"epochs={epochs} must be 0 (no fine-tuning) or a number of epochs up to {MAX_EPOCHS:,}, e.g. epochs=2")
    if not 0 < lr < math.inf:
        raise SlimlensError(f"lr={lr} must be a positive learning rate, e.g. lr=0.001")


def task_loss(data: CompressionData, outputs: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
              teacher_outputs: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of the task: CE, BCE, reconstruction MSE, or (generator, discriminator) MSE to the original's output."""
    if data.task == "classification":
        return F.cross_entropy(outputs, labels)
    if data.task == "binary-classification":
        return F.binary_cross_entropy(outputs[:, 0].clamp(1e-7, 1 - 1e-7), labels.float())
    if data.task == "reconstruction":
        return F.mse_loss(outputs, inputs)
    if teacher_outputs is None:
        raise ValueError(f"fine-tuning a {data.task} model needs the original model as teacher")
    return F.mse_loss(outputs, teacher_outputs)  # a generator's images, a discriminator's logits


def mix(inputs: torch.Tensor, lam: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., 2018): the batch blended by ``lam`` with a shuffled copy of itself, and that shuffle."""
    perm = torch.randperm(len(inputs), generator=gen)
    return lam * inputs + (1 - lam) * inputs[perm], perm


def mixed_targets(labels: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int | None) -> torch.Tensor:
    """The labels blended as ``mix`` blended their images: one-hot over ``num_classes``, or 0/1 probabilities if None."""
    targets = F.one_hot(labels, num_classes).float() if num_classes else labels.float()
    return lam * targets + (1 - lam) * targets[perm]


def finetune(
    model: nn.Module,
    data: CompressionData,
    epochs: float,
    lr: float = 1e-3,
    batch_size: int = BATCH_SIZE,
    teacher: nn.Module | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    augment: bool | None = None,
    mixup: float = 0.0,
    progress: Callable[[str], None] = lambda message: None,
) -> nn.Module:
    """Train ``model`` in place for ``epochs`` (fractions allowed) on the task, then return it in eval mode.

    ``teacher`` (the original model) supplies targets for generators and for ``loss_fn``;
    ``loss_fn(outputs, inputs, labels, teacher_outputs)`` replaces the task loss (distillation);
    ``after_step(model)`` runs after every optimiser step (pruning re-applies its masks there).
    A generator trains on fresh latent vectors, as many per epoch as the training split has digits, to match its original. Gradients are
    clipped as the model's own training recipe clipped them (``data.clip_grad_norm``).
    """
    augment = data.augment if augment is None else augment  # None: as the model's own training did
    gen = torch.Generator().manual_seed(data.seed)
    mixing = mixup > 0 and data.labelled
    if mixup > 0 and not mixing:
        raise SlimlensError(f"mixup blends labelled digits; a {data.task} model has none: set mixup = 0")
    # mixup's blend weights: torch has no seeded Beta sampler, and NumPy's seed must not be negative
    mix_rng = np.random.default_rng(data.seed % 2**32) if mixing else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = len(data.train)
    steps = max(1, math.ceil(epochs * n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    if teacher is not None:
        teacher = teacher.eval()
    model.train()
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            if step >= steps:
                break
            idx = order[i : i + batch_size]
            labels = data.train.labels[idx]
            if data.task == "generation":
                inputs = torch.randn(len(idx), data.input_shape[0], generator=gen)
            else:
                inputs = data.train.images[idx]
                if augment and data.labelled:
                    inputs = random_affine(inputs, gen)
                if mixing:
                    lam = float(mix_rng.beta(mixup, mixup))
                    inputs, perm = mix(inputs, lam, gen)
                if data.task == "discrimination":  # what a discriminator judges: real digits and its generator's
                    half = len(idx) // 2
                    inputs = torch.cat([inputs[:half], data.generated(len(idx) - half, gen)])
            teacher_out = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = teacher(inputs)
            outputs = model(inputs)
            if mixing:
                labels = mixed_targets(labels, perm, lam, outputs.shape[1] if data.task == "classification" else None)
            if loss_fn is not None:
                loss = loss_fn(outputs, inputs, labels, teacher_out)
            else:
                loss = task_loss(data, outputs, inputs, labels, teacher_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if data.clip_grad_norm:
                nn.utils.clip_grad_norm_(params, data.clip_grad_norm)
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            step += 1
            if step % 50 == 0 or step == steps:
                progress(f"fine-tune step {step}/{steps} loss {loss.item():.4f}")
    return model.eval()


def clone(model: nn.Module) -> nn.Module:
    """A deep copy, so a step never changes the model it was given."""
    return copy.deepcopy(model)


def trainable_clone(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter trainable, whatever an earlier step froze."""
    copied = clone(model).eval()
    for p in copied.parameters():
        p.requires_grad_(True)
    return copied
