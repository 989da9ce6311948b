"""Deep-Compression weight sharing (Han et al., 2016, §3): a k-means codebook per layer, centroids fine-tuned.

Each Conv/Linear weight's nonzero values are clustered into ``2**bits`` shared values (k-means with
linear initialisation, which Han et al. found best because it keeps the rare large weights); zeros
left by pruning stay zero. Fine-tuning then trains the centroids: every weight in a cluster adds its
gradient to the cluster's centroid (``codebook[index]`` backpropagates as a scatter-add). The result
is a float module whose weights hold at most ``2**bits`` distinct nonzero values per layer;
``compressed-storage`` (compress/sparse.py) then stores one codebook index per weight.

>>> import zoo
>>> from compress.context import data_for
>>> from compress.sharing import WeightSharingConfig, share_weights
>>> shared = share_weights(zoo.load("lenet5"), WeightSharingConfig(bits=4, epochs=0), data_for("lenet5"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.context import CompressionData
from compress.variant import plain_weights
from compress.finetune import check_budget, finetune, trainable_clone
from compress.prune import MAGNITUDE_PRUNABLE, prunable_weights
from compress.steps import register_step
from zoo.errors import SlimlensError

Progress = Callable[[str], None]


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids, assignment per value) of 1-D k-means on ``values`` from linearly spaced initial centroids."""
    values = values.detach().flatten().float()
    k = max(1, min(k, values.numel()))
    centroids = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iterations):
        # centroids stay sorted in 1-D k-means, so the nearest one is found between midpoints
        assign = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k).index_add_(0, assign, values)
        counts = torch.zeros(k).index_add_(0, assign, torch.ones_like(values))
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # an empty cluster keeps its centroid
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids, torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)


class SharedWeight(nn.Module):
    """Parametrization ``weight = codebook[index]`` where the weight was nonzero, 0 where pruning left a zero."""

    def __init__(self, weight: torch.Tensor, bits: int, iterations: int):
        super().__init__()
        keep = weight.detach() != 0
        centroids, assign = kmeans_1d(weight.detach()[keep], 2**bits, iterations) if keep.any() else (torch.zeros(1), None)
        index = torch.zeros(weight.shape, dtype=torch.long)
        if assign is not None:
            index[keep] = assign
        self.codebook = nn.Parameter(centroids)
        self.register_buffer("index", index)
        self.register_buffer("keep", keep)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, self.codebook[self.index], torch.zeros((), dtype=self.codebook.dtype))


@dataclass(frozen=True)
class WeightSharingConfig:
    """k-means weight sharing (Deep Compression): each layer keeps 2**bits shared values, centroids then fine-tuned."""

    bits: int = 4  # 2**bits shared values per Linear (and LSTM) weight
    conv_bits: int | None = None  # bits for convolutions (Han et al.: 8 for conv, 5 for fc); None → ``bits``
    epochs: float = 1.0  # centroid fine-tuning epochs (0: k-means only)
    lr: float = 1e-4
    iterations: int = 30  # k-means iterations per layer

    strength_field: ClassVar[str] = "bits"

    def __post_init__(self) -> None:
        for name, value in (("bits", self.bits), ("conv_bits", self.conv_bits)):
            if value is not None and not 1 <= value <= 8:
                raise SlimlensError(f"{name}={value} is out of range; give 1 to 8 bits (compressed storage keeps ≤256 values)")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise SlimlensError(f"iterations={self.iterations!r} must be a whole number of k-means iterations, at least 1, e.g. iterations=30")
        check_budget(self.epochs, self.lr)


def _bits_for(module: nn.Module, config: WeightSharingConfig) -> int:
    is_conv = isinstance(module, nn.modules.conv._ConvNd)  # every Conv and ConvTranspose, 1-D to 3-D
    return config.conv_bits if is_conv and config.conv_bits is not None else config.bits


@register_step("weight-sharing", WeightSharingConfig)
def share_weights(model: nn.Module, config: WeightSharingConfig, data: CompressionData,
                  progress: Progress = lambda message: None, original: nn.Module | None = None) -> nn.Module:
    """A copy of ``model`` whose every weight matrix holds ≤ 2**bits distinct nonzero values, centroids fine-tuned."""
    shared = plain_weights(trainable_clone(model))
    targets = prunable_weights(shared)
    for module, name in targets:
        if isinstance(module, MAGNITUDE_PRUNABLE):
            parametrize.register_parametrization(module, name, SharedWeight(getattr(module, name), _bits_for(module, config), config.iterations))
            getattr(module.parametrizations, name).original.requires_grad_(False)
        else:  # LSTM weights cannot be parametrized (cuDNN-style flat weights): shared once, frozen while fine-tuning
            weight = getattr(module, name)
            sharing = SharedWeight(weight, _bits_for(module, config), config.iterations)
            with torch.no_grad():
                weight.copy_(sharing(weight))
            weight.requires_grad_(False)
    progress(f"weight sharing: {len(targets)} layers clustered")
    if config.epochs > 0:
        teacher = (original if original is not None else model).eval() if data.matches_original else None
        finetune(shared, data, config.epochs, lr=config.lr, teacher=teacher, progress=progress)
    for module, name in targets:
        if parametrize.is_parametrized(module, name):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for p in shared.parameters():
        p.requires_grad_(True)
    return shared.eval()
