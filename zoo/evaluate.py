"""``evaluate``: the task metric of a zoo model (or any forward function standing in for it) on its test split."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from zoo import metrics
from zoo.datasets import dataset
from zoo.models.dcgan import latents
from zoo.registry import spec


def evaluate(
    name: str,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    data_root: str | Path | None = None,
    split: str = "test",
    weights_root: str | Path | None = None,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Metrics of zoo model ``name`` on ``split``; pass ``forward`` to measure a compressed stand-in instead.

    Classifiers: accuracy, macro-F1, per-class recall, confusion. Generator: Fréchet distance in
    ``seed-cnn`` features, confident-digit fraction (and fidelity to ``reference``). Discriminator:
    real-vs-generated accuracy. Autoencoder: reconstruction MSE.
    """
    from zoo.loading import load  # the evaluated model and its helpers load lazily

    model_spec = spec(name)
    if forward is None:
        forward = load(name, weights_root)
    data = dataset(model_spec.dataset, split, root=data_root)
    # a module handed over straight from training would score with dropout on and its BatchNorm moving
    with torch.inference_mode(), eval_mode(forward if isinstance(forward, torch.nn.Module) else None):
        if model_spec.task in ("classification", "binary-classification"):
            outputs = metrics.require_finite(metrics.batched_outputs(forward, data.images))
            return metrics.classification_metrics(metrics.predicted_labels(outputs), data.labels, len(model_spec.class_names))
        if model_spec.task == "reconstruction":
            return metrics.reconstruction_metrics(forward, data.images)
        z = latents(metrics.GAN_EVAL_SAMPLES, metrics.GAN_EVAL_SEED)
        if model_spec.task == "generation":
            return metrics.generator_metrics(forward, load("seed-cnn"), data.images, z, reference=reference)
        if model_spec.task == "discrimination":
            fake = metrics.batched_outputs(load("dcgan-g", weights_root), z)
            return metrics.discriminator_metrics(forward, data.images, fake)
    raise ValueError(f"no metric for task {model_spec.task!r}")


@contextmanager
def eval_mode(module: torch.nn.Module | None) -> Iterator[None]:
    """Run with every submodule in eval mode, then put each one back in the mode it was in."""
    if module is None:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:  # each submodule as it was: a caller may have frozen some BatchNorm on purpose
            m.training = training
