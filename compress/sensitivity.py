"""Per-layer sensitivity: the task metric when one layer alone is pruned, or alone quantized, without fine-tuning.

Han et al. (2015) chose per-layer pruning ratios from such curves; they also say which layers to keep
in higher precision. ``sensitivity`` returns a JSON-ready dict that the pipeline writes to
results.json under ``sensitivity``::

    {"metric": "accuracy", "baseline": 0.98, "evaluated_on": "256 of 1000 test images (seed 0)",
     "pruning": {"ratios": [0.5, 0.75, 0.9], "layers": {"head.weight": {"params": 5000, "values": [...]}}},
     "quantization": {"bits": [4, 2], "layers": {...}}, "seconds": 12.3}

Classifiers are measured on a seeded subset of the test split (``subset`` images) so a ResNet's
hundred-odd evaluations stay within about 30 s on 2 cores. A generator's Fréchet distance (in
``seed-cnn`` features, against the whole test split, features computed once) uses ``subset`` fixed
latents: smaller samples bias FD upwards, so compare values within one report, not with the 1,000-latent
figure. Other tasks use ``data.evaluate``'s full test metric (an autoencoder's MSE).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from compress.context import CompressionData
from compress.finetune import clone
from compress.prune import keep_largest, prunable_weights
from compress.variant import plain_weights
from compress.quantize.common import output_channel_axis
import zoo
from zoo import metrics

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SensitivityConfig:
    """Which pruning ratios and bit widths to try per layer, and how many test images to score them on."""

    ratios: tuple[float, ...] = (0.5, 0.75, 0.9)  # fraction of the layer's smallest-magnitude weights zeroed
    bits: tuple[int, ...] = (4, 2)  # symmetric per-output-channel weight fake-quantization (8 bits is lossless here)
    subset: int = 256  # test images for classifiers; 0 → the whole test split
    seed: int = 0

    def __post_init__(self) -> None:
        bad_ratio = next((r for r in self.ratios if not 0 < r < 1), None)
        if bad_ratio is not None:
            raise ValueError(f"ratios: {bad_ratio} is not a fraction of a layer's weights; give values in (0, 1), e.g. [0.5, 0.75, 0.9]")
        bad_bits = next((b for b in self.bits if not 2 <= b <= 16), None)
        if bad_bits is not None:
            raise ValueError(f"bits: {bad_bits} is out of range; give 2 to 16 bits, e.g. [4, 2]")
        if self.subset < 0:
            raise ValueError(f"subset={self.subset} must be 0 (the whole test split) or a number of test images")


def magnitude_pruned(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """``weight`` with exactly its ``ratio`` smallest-magnitude entries set to zero (ties at the threshold kept back, as pruning does)."""
    keep = keep_largest(weight.abs().flatten(), ratio).reshape(weight.shape)
    return torch.where(keep, weight, torch.zeros_like(weight))


def fake_quantized(weight: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """``weight`` rounded to ``bits``-bit symmetric integers per slice along ``axis`` (its output channels), then scaled back."""
    levels = 2 ** (bits - 1) - 1
    moved = weight.movedim(axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / max(levels, 1)
    return ((rows / scale).round().clamp(-levels - 1, levels) * scale).reshape(moved.shape).movedim(0, axis)


def _scorer(data: CompressionData, config: SensitivityConfig) -> tuple[Callable[[nn.Module], float], str]:
    """A function scoring a module on the primary metric, and what it was evaluated on."""
    n = len(data.test) if config.subset <= 0 else min(config.subset, len(data.test))
    if data.task == "generation" and data.primary_metric == "fd":
        return _fd_scorer(data, n, config.seed), f"Fréchet distance of {n} generated digits (latent seed {config.seed}) to {len(data.test)} test images"
    classifier = data.labelled and data.primary_metric == "accuracy"
    if not classifier:
        return (lambda module: float(data.evaluate(_forward(module))[data.primary_metric])), f"the full {data.task} test metric"
    pick = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(config.seed))[:n]
    images, labels = data.test.images[pick], data.test.labels[pick]

    def accuracy(module: nn.Module) -> float:
        predicted = metrics.predicted_labels(metrics.batched_outputs(_forward(module), images))
        return float((predicted == labels).float().mean())

    return accuracy, f"{n} of {len(data.test)} test images (seed {config.seed})"


def _fd_scorer(data: CompressionData, n: int, seed: int) -> Callable[[nn.Module], float]:
    """Fréchet distance in the zoo classifier's features, the real side computed once."""
    classifier = zoo.load("seed-cnn")
    real = metrics.batched_outputs(classifier.features, data.test.images).numpy()
    latent = data.inputs(n, seed=seed)

    def fd(module: nn.Module) -> float:
        fake = metrics.batched_outputs(_forward(module), latent)
        return metrics.frechet_distance(real, metrics.batched_outputs(classifier.features, fake).numpy())

    return fd


def _forward(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(batch)

    return run


def sensitivity(model: nn.Module, data: CompressionData, config: SensitivityConfig = SensitivityConfig(),
                progress: Progress = lambda message: None) -> dict:
    """Metric per layer against pruning ratio and against weight bits, one layer changed at a time (JSON-ready)."""
    start = time.perf_counter()
    probe = plain_weights(clone(model)).eval()
    score, evaluated_on = _scorer(data, config)
    pruning: dict[str, dict] = {}
    quantization: dict[str, dict] = {}
    names = {module: name for name, module in probe.named_modules()}
    targets = prunable_weights(probe)
    for i, (module, pname) in enumerate(targets):
        label = f"{names[module]}.{pname}".lstrip(".")
        weight = getattr(module, pname)
        saved = weight.detach().clone()
        curves = {}
        for key, changes in (("pruning", [magnitude_pruned(saved, r) for r in config.ratios]),
                             ("quantization", [fake_quantized(saved, b, output_channel_axis(module)) for b in config.bits])):
            values = []
            for changed in changes:
                with torch.no_grad():
                    weight.copy_(changed)
                values.append(round(score(probe), 5))
            curves[key] = values
        with torch.no_grad():
            weight.copy_(saved)
        pruning[label] = {"params": saved.numel(), "values": curves["pruning"]}
        quantization[label] = {"params": saved.numel(), "values": curves["quantization"]}
        progress(f"sensitivity {i + 1}/{len(targets)}: {label}")
    return {
        "metric": data.primary_metric,
        "higher_is_better": data.higher_is_better,
        "baseline": round(score(probe), 5),
        "evaluated_on": evaluated_on,
        "pruning": {"method": "one layer's smallest-magnitude weights zeroed, no fine-tuning", "ratios": list(config.ratios),
                    "layers": pruning},
        "quantization": {"method": "one layer's weights fake-quantized, symmetric per output channel", "bits": list(config.bits),
                         "layers": quantization},
        "seconds": round(time.perf_counter() - start, 2),
    }
