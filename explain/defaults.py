"""Settings for 28x28 digits: what Captum needs but leaves open, and what the CLI uses and records.

``required_options`` fills only the arguments a Captum method cannot run without, so
``explain.attribute`` otherwise matches Captum's defaults. ``default_options`` is the CLI's fuller
choice for 1x28x28 inputs in [0, 1]: a black baseline (the digits' background), a 4x4 occlusion
window with stride 2, 4x4-pixel feature groups for the surrogate and ablation methods. A vector
input (a GAN latent) has no neighbourhoods: occlusion and ablation perturb one element at a time.
"""

from __future__ import annotations

from typing import Any

import torch

PATCH = 4  # pixels per side of a feature group: 49 groups on a 28x28 digit


def patch_mask(shape: tuple[int, ...], patch: int = PATCH) -> torch.Tensor:
    """A (1, C, H, W) integer mask numbering square ``patch`` x ``patch`` groups (shared by all channels)."""
    c, h, w = shape[-3] if len(shape) >= 3 else 1, shape[-2], shape[-1]
    rows = torch.arange(h) // patch
    cols = torch.arange(w) // patch
    grid = rows[:, None] * ((w + patch - 1) // patch) + cols[None, :]
    return grid.expand(c, h, w).reshape(1, *shape).clone() if len(shape) >= 3 else grid.reshape(1, h, w).clone()


def _window(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    # Occlusion's window spans every channel and `size` pixels in each of the last two dimensions;
    # a vector's elements (a GAN latent's units) have no neighbours, so each is occluded alone.
    return (*shape[:-2], size, size) if len(shape) >= 2 else (1,) * len(shape)


def _strides(shape: tuple[int, ...], step: int) -> tuple[int, ...]:
    return (*(1 for _ in shape[:-2]), step, step) if len(shape) >= 2 else (1,) * len(shape)


def required_options(method: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Arguments ``method`` cannot run without and Captum gives no default for, for per-sample ``shape``."""
    if method == "occlusion":
        return {"sliding_window_shapes": _window(shape, 4), "strides": _strides(shape, 2)}
    if method == "gradient_shap":
        return {"baselines": torch.zeros(1, *shape)}
    return {}


def default_options(method: str, shape: tuple[int, ...] = (1, 28, 28)) -> dict[str, Any]:
    """The CLI's settings for ``method`` on inputs of per-sample ``shape`` (Captum's names and values)."""
    name, _, inner = method.partition(":")
    if name == "noise_tunnel":
        return {**default_options(inner, shape), "nt_type": "smoothgrad", "nt_samples": 16, "stdevs": 0.15, "nt_samples_batch_size": 16}
    if name in ("integrated_gradients",):
        return {"baselines": 0.0, "n_steps": 50, "internal_batch_size": 800}
    if name == "deeplift":
        return {"baselines": 0.0}
    if name == "gradient_shap":
        return {"baselines": torch.zeros(1, *shape), "n_samples": 20, "stdevs": 0.1}
    if name == "gradcam":
        return {"relu_attributions": True}
    if name == "occlusion":  # on a vector: one element at a time (see _window)
        return {**required_options("occlusion", shape), "baselines": 0.0, "perturbations_per_eval": 32 if len(shape) >= 2 else 64}
    if len(shape) < 2 and name in ("feature_ablation", "lime", "kernel_shap"):
        # a vector (e.g. a GAN latent): every element is its own feature
        return {"baselines": 0.0, "perturbations_per_eval": 64} | ({"n_samples": 200} if name != "feature_ablation" else {})
    if name == "feature_ablation":
        return {"feature_mask": patch_mask(shape), "baselines": 0.0, "perturbations_per_eval": 49}
    if name in ("lime", "kernel_shap"):
        return {"feature_mask": patch_mask(shape), "baselines": 0.0, "n_samples": 200, "perturbations_per_eval": 50}
    return {}


def describe(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as JSON: tensors become a short description (shape, and the value when constant)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, torch.Tensor):
            if key == "feature_mask":
                out[key] = f"{int(value.max()) + 1} groups of {PATCH}x{PATCH} pixels, shape {list(value.shape)}"
            elif value.numel() and bool((value == value.flatten()[0]).all()):
                out[key] = f"constant {float(value.flatten()[0]):g}, shape {list(value.shape)}"
            else:
                out[key] = f"tensor of shape {list(value.shape)}"
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out
