"""What every compression step needs to know about the model's data and task, in one object.

A step function reads its calibration inputs, fine-tuning batches and the evaluation metric from a
``CompressionData`` instead of knowing about zoo names, so the same step works on any model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import zoo
from zoo.datasets import DigitDataset
from zoo.errors import SlimlensError
from zoo.models.dcgan import latents

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CompressionData:
    """Train/test data, task and metric of the model being compressed."""

    model_name: str  # a zoo name, or the builder path for a user's model
    task: str  # classification, binary-classification, generation, discrimination, reconstruction
    family: str
    train: DigitDataset
    test: DigitDataset
    primary_metric: str
    higher_is_better: bool
    input_shape: tuple[int, ...]
    source: dict[str, Any] = field(default_factory=dict)  # how a TorchVariant rebuilds the architecture
    data_root: str | None = None
    seed: int = 0
    clip_grad_norm: float | None = None  # gradient-norm clipping the model was trained with (LSTMs); fine-tuning keeps it
    # whether the model was trained on shifted and rotated digits; fine-tuning does as its training did (a linear
    # model trained on plain digits lost 1.5 points to a fine-tune on augmented ones that the compression did not cause)
    augment: bool = True

    @property
    def matches_original(self) -> bool:
        """Whether fine-tuning targets the original model's outputs: a generator or discriminator has no labels of its own."""
        return self.task in ("generation", "discrimination")

    @property
    def labelled(self) -> bool:
        """Whether the training digits carry the labels the task learns (a classifier's): what augmentation and mixup apply to."""
        return self.task in ("classification", "binary-classification")

    @property
    def _opponent_name(self) -> str | None:
        return zoo.spec(self.source["zoo"]).trained_with if self.source.get("zoo") and self.task == "discrimination" else None

    @functools.cached_property
    def _opponent(self) -> torch.nn.Module | None:
        return zoo.load(self._opponent_name).eval() if self._opponent_name else None

    def generated(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` images from the generator a discriminator was trained against (what it must tell from real ones)."""
        if self._opponent is None:
            raise SlimlensError(f"{self.model_name} has no generator it was trained against")
        with torch.no_grad():
            return self._opponent(torch.randn(n, zoo.spec(self._opponent_name).input_shape[0], generator=gen))

    def evaluate(self, forward: Forward, reference: Forward | None = None) -> dict:
        """Task metrics of ``forward`` on the test split (``reference`` is the original, for GAN fidelity)."""
        if self.source.get("zoo"):
            return zoo.evaluate(self.source["zoo"], forward=forward, data_root=self.data_root, reference=reference)
        from zoo import metrics

        outputs = metrics.require_finite(metrics.batched_outputs(forward, self.test.images))
        num_classes = max(2, int(self.test.labels.max()) + 1)
        return metrics.classification_metrics(metrics.predicted_labels(outputs), self.test.labels, num_classes)

    def metric_drop(self, base: dict, new: dict) -> float:
        """How much worse ``new`` is than ``base`` on the primary metric (positive = worse), in metric units."""
        delta = new[self.primary_metric] - base[self.primary_metric]
        return -delta if self.higher_is_better else delta

    def inputs(self, n: int, split: str = "train", seed: int | None = None) -> torch.Tensor:
        """``n`` model inputs drawn reproducibly: images, or latent vectors for a generator."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        if self.task == "generation":
            # odd seeds for the training side, so calibration never draws the evaluation latents (GAN_EVAL_SEED = 0)
            chosen = self.seed if seed is None else seed
            return latents(n, seed=2 * chosen + 1 if split == "train" else chosen)
        pool = self.train if split == "train" else self.test
        if self.task == "discrimination" and n > 1:
            # what a discriminator judges, so what it is calibrated on: real digits and its generator's, half each
            half = n // 2
            real = pool.images[torch.randperm(len(pool), generator=gen)[:half]]
            return torch.cat([real, self.generated(n - half, gen)])
        idx = torch.randperm(len(pool), generator=gen)[:n]
        return pool.images[idx]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic batch for tracing and export."""
        return self.inputs(batch, split="test", seed=0)


def data_for(model_name: str, data: str | None = None, data_root: str | Path | None = None, seed: int = 0) -> CompressionData:
    """The ``CompressionData`` of a zoo model (or of a user's model trained on dataset ``data``)."""
    root = str(data_root) if data_root is not None else None
    if model_name in zoo.list_models():
        spec = zoo.spec(model_name)
        dataset_name = spec.dataset
        if data is not None and data != dataset_name:
            raise SlimlensError(f"--data {data} does not match zoo model {model_name}, which was trained on {dataset_name}; "
                                "leave --data out for a zoo model")
        return CompressionData(
            model_name=model_name, task=spec.task, family=spec.family,
            train=zoo.dataset(dataset_name, "train", root=root), test=zoo.dataset(dataset_name, "test", root=root),
            primary_metric=spec.primary_metric, higher_is_better=spec.higher_is_better, input_shape=spec.input_shape,
            source={"zoo": model_name}, data_root=root, seed=seed, clip_grad_norm=spec.recipe.extra.get("clip_grad_norm"),
            augment=spec.recipe.augment,
        )
    if data is None:
        raise SlimlensError(f"{model_name} is not a zoo model: name the dataset it was trained on with --data (mnist or mnist-ge5)")
    task = "binary-classification" if data == "mnist-ge5" else "classification"
    return CompressionData(
        model_name=model_name, task=task, family="custom",
        train=zoo.dataset(data, "train", root=root), test=zoo.dataset(data, "test", root=root),
        primary_metric="accuracy", higher_is_better=True, input_shape=(1, 28, 28),
        source={"builder": model_name}, data_root=root, seed=seed,
    )
