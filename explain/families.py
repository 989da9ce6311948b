"""Explanations shaped for each zoo family: LSTM time steps, GAN discriminators and latents, autoencoder codes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from explain.methods import Model, attribute


def lstm_attribution(model: Model, inputs: torch.Tensor, target: Any = None, method: str = "integrated_gradients", **options: Any) -> dict[str, torch.Tensor]:
    """A row-reading LSTM's attribution per pixel (N, 28, 28), per time step (row) and per feature (column).

    The model runs in eval mode and its own mode is restored afterwards (see ``explain.attribute``);
    on a GPU, cuDNN's RNN kernels are switched off for the backward pass.

    Example::

        >>> import zoo, explain.families as fam
        >>> x = zoo.dataset("mnist", "test").images[:2]
        >>> fam.lstm_attribution(zoo.load("seed-lstm"), x, method="saliency")["per_step"].shape
        torch.Size([2, 28])
    """
    maps = attribute(model, inputs, target=target, method=method, **options).detach()
    pixels = maps.reshape(len(maps), -1, maps.shape[-2], maps.shape[-1]).sum(1)  # (N, steps, features)
    return {"per_pixel": pixels, "per_step": pixels.sum(2), "per_feature": pixels.sum(1)}


def discriminator_saliency(discriminator: nn.Module, real: torch.Tensor, generated: torch.Tensor, method: str = "saliency", **options: Any) -> dict[str, torch.Tensor]:
    """What a GAN discriminator looks at on real versus generated digits, with its probability of "real" for each."""
    with torch.no_grad():
        real_p = torch.sigmoid(discriminator(real)).reshape(-1)
        fake_p = torch.sigmoid(discriminator(generated)).reshape(-1)
    return {
        "real": attribute(discriminator, real, target=0, method=method, **options).detach(),
        "generated": attribute(discriminator, generated, target=0, method=method, **options).detach(),
        "real_probability": real_p,
        "generated_probability": fake_p,
    }


class _Composed(nn.Module):
    """z → D(G(z)) or z → a summary of G(z), as one module so gradient methods see one forward."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module | None, region: tuple[slice, slice] | None):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.region = region

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        image = self.generator(z)
        if self.discriminator is not None:
            return self.discriminator(image)
        patch = image[..., self.region[0], self.region[1]] if self.region else image
        return patch.reshape(len(z), -1).mean(1, keepdim=True)


def latent_attribution(
    generator: nn.Module,
    latents: torch.Tensor,
    discriminator: nn.Module | None = None,
    method: str = "integrated_gradients",
    *,
    region: tuple[slice, slice] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Attribution (N, latent_dim) of D(G(z)) to each latent unit, or without a discriminator of G(z)'s mean brightness (in ``region``).

    Example::

        >>> import zoo, explain.families as fam
        >>> z = zoo.latents(2)
        >>> fam.latent_attribution(zoo.load("dcgan-g"), z, zoo.load("dcgan-d"), method="saliency").shape
        torch.Size([2, 64])
    """
    composed = _Composed(generator, discriminator, region)
    return attribute(composed, latents, target=0, method=method, **options).detach()


def code_attribution(autoencoder: nn.Module, inputs: torch.Tensor, units: list[int] | None = None, method: str = "integrated_gradients", **options: Any) -> torch.Tensor:
    """Attribution of each latent code unit to the input pixels: (N, units, *input shape), via ``autoencoder.encoder``."""
    encoder = autoencoder.encoder
    with torch.no_grad():
        code_size = encoder(inputs[:1]).shape[1]
    units = list(range(code_size)) if units is None else units
    maps = [attribute(encoder, inputs, target=u, method=method, **options).detach() for u in units]
    return torch.stack(maps, dim=1)
