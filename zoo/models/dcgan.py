"""A DCGAN (Radford et al., 2016) sized for 28x28 digits: generator and discriminator."""

from __future__ import annotations

import torch
from torch import nn

from zoo.models.common import Normalize
from zoo.registry import TrainRecipe, register_model

LATENT_DIM = 64
GAN_RECIPE = TrainRecipe(epochs=100, lr=2e-4, batch_size=32, seed=5, quick_epochs=1, extra={"betas": (0.5, 0.999)})


class Generator(nn.Module):
    """z (batch, 64) → image (batch, 1, 28, 28) with pixels in [0, 1], like the dataset's."""

    latent_dim = LATENT_DIM

    def __init__(self, latent_dim: int = LATENT_DIM, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, width * 2, 7, 1, 0, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(True),
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.net(z.reshape(z.shape[0], -1, 1, 1)) + 1) / 2


class Discriminator(nn.Module):
    """image (batch, 1, 28, 28) in [0, 1] → logit (batch, 1) that the image is a real digit."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            Normalize(0.5, 0.5),  # the [-1, 1] range DCGAN discriminators are trained on
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(width * 2, 1, 7, 1, 0),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def latents(n: int, seed: int = 0, dim: int = LATENT_DIM) -> torch.Tensor:
    """``n`` fixed standard-normal latent vectors, the same for a given seed on every machine."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@register_model(
    "dcgan-g",
    family="gan",
    task="generation",
    recipe=GAN_RECIPE,
    description="DCGAN generator: 64-d latent → 7x7 → 14x14 → 28x28 transposed convolutions with BatchNorm.",
    primary_metric="fd",
    higher_is_better=False,
    input_shape=(LATENT_DIM,),
    trained_with="dcgan-d",
)
def dcgan_g() -> Generator:
    """The DCGAN generator."""
    return Generator()


@register_model(
    "dcgan-d",
    family="gan",
    task="discrimination",
    recipe=GAN_RECIPE,
    description="DCGAN discriminator: two strided 4x4 convolutions with LeakyReLU and BatchNorm, a 7x7 logit.",
    primary_metric="accuracy",
    class_names=("generated", "real"),
    trained_with="dcgan-g",
)
def dcgan_d() -> Discriminator:
    """The DCGAN discriminator."""
    return Discriminator()
