"""The fixed inputs every variant of a model is timed on, so speed figures compare like with like."""

from __future__ import annotations

import torch

import zoo

INPUT_SEED = 0


def timing_inputs(model: str | None, batch: int, input_shape: tuple[int, ...] | None = None, seed: int = INPUT_SEED) -> torch.Tensor:
    """``batch`` inputs for timing: the first test images (or fixed latents for a generator), else seeded noise.

    Real data rather than zeros, because sparse or quantized kernels can be faster on zeros.
    """
    if model is not None:
        spec = zoo.spec(model)
        if spec.task == "generation":
            return zoo.latents(batch, seed)
        images = zoo.dataset(spec.dataset, "test").images
        reps = -(-batch // len(images))  # a batch larger than the split repeats it
        return images.repeat(reps, 1, 1, 1)[:batch].contiguous()
    if input_shape is None:
        raise ValueError("name a zoo model or give input_shape")
    return torch.rand((batch, *input_shape), generator=torch.Generator().manual_seed(seed))


def inputs_description(model: str | None, input_shape: tuple[int, ...] | None = None, seed: int = INPUT_SEED) -> str:
    """What ``timing_inputs`` gives for ``model``, in words for results.json."""
    if model is not None:
        spec = zoo.spec(model)
        if spec.task == "generation":
            return f"fixed latents (zoo.latents, seed {seed}), the same for every variant"
        return f"the first images of the {spec.dataset} test split, the same for every variant"
    return f"seeded uniform noise of the model's input shape {tuple(input_shape or ())} (seed {seed}), the same for every variant"
