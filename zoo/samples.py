"""A grid of generated digits as a PNG, so a person can judge a generator by eye."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torchvision.utils import save_image

from zoo.cards import check_out, write_atomic, writing
from zoo.errors import SlimlensError
from zoo.loading import load
from zoo.models.dcgan import latents
from zoo.registry import spec


def save_sample_grid(name: str, out: Path, n: int = 64, seed: int = 0, weights_root: str | Path | None = None) -> Path:
    """Draw ``n`` samples of generator ``name`` from fixed latents and write them as a PNG grid to ``out``."""
    if spec(name).task != "generation":
        raise SlimlensError(f"{name} is not a generator; try dcgan-g")
    if n < 1:
        raise SlimlensError(f"--n must be at least 1, got {n}")
    out = check_out(out, folder=False)
    generator = load(name, weights_root)
    with torch.inference_mode():
        images = generator(latents(n, seed))
    buffer = io.BytesIO()
    save_image(images, buffer, format="png", nrow=max(1, int(n**0.5)), padding=2, pad_value=1.0)
    with writing(out):
        write_atomic(out, buffer.getvalue())
    return out
