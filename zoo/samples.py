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


MAX_SAMPLES = 10_000


def save_sample_grid(name: str, out: Path, n: int = 64, seed: int = 0, weights_root: str | Path | None = None) -> Path:
    """Draw ``n`` samples of generator ``name`` from fixed latents and write them as a PNG grid to ``out``."""
    if spec(name).task != "generation":
        raise SlimlensError(f"{name} is not a generator; try dcgan-g")
    if not 1 <= n <= MAX_SAMPLES:  # 10,000 digits already make a 2,800-pixel-wide grid; 10^8 asked for 25 GB
        raise SlimlensError(f"--n must be from 1 to {MAX_SAMPLES:,}, got {n:,}")
    out = check_out(out, folder=False)
    if out.suffix.lower() != ".png":  # the bytes are PNG whatever the name says
        raise SlimlensError(f"--out {out} does not end in .png; the grid is written as a PNG, e.g. --out {out.with_suffix('.png')}")
    generator = load(name, weights_root)
    with torch.inference_mode():
        images = generator(latents(n, seed))
    buffer = io.BytesIO()
    save_image(images, buffer, format="png", nrow=max(1, int(n**0.5)), padding=2, pad_value=1.0)
    with writing(out):
        write_atomic(out, buffer.getvalue())
    return out
