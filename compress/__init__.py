"""slimlens compression: variants of a model that are smaller and faster, and the steps that make them.

>>> import compress
>>> variants = compress.run("seed-cnn", "int8", out_dir="/tmp/seed-cnn-int8")   # doctest: +SKIP
>>> [v.name for v in variants]                                                  # doctest: +SKIP
"""

from compress.distill import DistillConfig, distill
from compress.pipeline import RunResult, load_model, run
from compress.recipe import Recipe, RecipeStep, list_presets, load_recipe
from compress.variant import OnnxVariant, TorchVariant, Variant, VariantError, load_variant

__all__ = [
    "DistillConfig",
    "OnnxVariant",
    "Recipe",
    "RecipeStep",
    "RunResult",
    "TorchVariant",
    "Variant",
    "VariantError",
    "distill",
    "list_presets",
    "load_model",
    "load_recipe",
    "load_variant",
    "run",
]
