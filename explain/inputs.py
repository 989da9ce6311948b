"""What gets explained: test-split samples picked by index or spread over the classes, or a user's image file."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from explain.errors import ExplainError

SIDE = 28


def spread_indices(labels: torch.Tensor, n: int) -> list[int]:
    """The first ``n`` indices taking one sample of each class in turn, so a small grid shows every digit."""
    by_class = {int(c): (labels == c).nonzero().flatten().tolist() for c in torch.unique(labels)}
    picked: list[int] = []
    rank = 0
    while len(picked) < min(n, len(labels)):
        for c in sorted(by_class):
            if rank < len(by_class[c]) and len(picked) < n:
                picked.append(by_class[c][rank])
        rank += 1
    return picked


def check_indices(indices: Sequence[int], size: int) -> list[int]:
    """``indices`` as a list, or an ExplainError naming the first one outside 0..size-1 or given twice."""
    seen: set[int] = set()
    for i in indices:
        if not 0 <= i < size:
            raise ExplainError(f"index {i} is out of range: the test split has {size:,} images (indices 0 to {size - 1})")
        if i in seen:  # its map files would overwrite each other, and drift's floor would compare an image with itself
            raise ExplainError(f"index {i} is given more than once in --indices; give each index once")
        seen.add(i)
    return list(indices)


MAX_INDICES = 100_000  # far above any split the zoo ships (MNIST's test split has 10,000 images)


def parse_indices(text: str) -> list[int]:
    """'3,17,40-43' → [3, 17, 40, 41, 42, 43]; an ExplainError for anything else."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                first, last = int(lo), int(hi)
                if last < first:
                    raise ExplainError(f"--indices range {part} runs backwards; write it lowest first, e.g. {last}-{first}")
                if last - first >= MAX_INDICES:  # expanding it would exhaust memory before any check of the split's size
                    raise ExplainError(f"--indices range {part} holds {last - first + 1:,} indices; give at most {MAX_INDICES:,}")
                out.extend(range(first, last + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ExplainError(f"--indices takes whole numbers and ranges like 3,17,40-43, not {text!r}") from None
    if not out:
        raise ExplainError("--indices is empty; give at least one index, e.g. --indices 0,1,2")
    if len(out) > MAX_INDICES:
        raise ExplainError(f"--indices lists {len(out):,} images; give at most {MAX_INDICES:,}")
    return out


def load_image(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read a digit image as a (1, 28, 28) tensor in [0, 1] plus what was converted; refuse what cannot be a digit.

    Converted: colour or palette images to greyscale, a larger square image shrunk to 28x28, and a
    dark digit on a light background inverted to MNIST's light digit on black. Refused: files that
    are not images, and images that are smaller than 28x28 or not square.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ExplainError(f"image {path} not found")
    try:
        with Image.open(path) as img:
            img.load()
            image = img.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise ExplainError(f"{path} is not a readable image ({str(exc).splitlines()[0]})") from None
    notes: list[str] = []
    w, h = image.size
    if (w, h) != (SIDE, SIDE):
        if w != h or w < SIDE:
            raise ExplainError(f"{path} is {w}x{h} pixels; expected a 28x28 greyscale digit (or a larger square image to shrink)")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        span = values.max() - values.min()
        pixels = (values - values.min()) / span if span > 0 else np.zeros_like(values)
        notes.append(f"scaled {image.mode} pixels to [0, 1]")
        image = Image.fromarray((pixels * 255).round().astype(np.uint8), mode="L")
    elif image.mode != "L":
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # transparent areas count as paper
            image = Image.alpha_composite(background, image.convert("RGBA"))
            notes.append("flattened transparency onto white")
        notes.append(f"converted {image.mode} to greyscale")
        image = image.convert("L")
    if image.size != (SIDE, SIDE):
        notes.append(f"resized {w}x{h} to 28x28")
        image = image.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    if float(pixels.mean()) > 0.5:  # MNIST digits are light strokes on black; a scan is usually the reverse
        pixels = 1.0 - pixels
        notes.append("inverted a dark digit on a light background")
    return pixels[None].contiguous(), notes
