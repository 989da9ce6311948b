"""slimlens compression: variants of a model that are smaller and faster, and the steps that make them.

>>> import compress
>>> variants = compress.run("seed-cnn", "int8", out_dir="/tmp/seed-cnn-int8")   # doctest: +SKIP
>>> [v.name for v in variants]                                                  # doctest: +SKIP

One step at a time, torchao-style (the model is never changed; the config's class picks the step):

>>> from compress.quantize import StaticInt8Config
>>> int8 = compress.apply(zoo.load("seed-cnn"), StaticInt8Config(calibration="entropy"), "seed-cnn")  # doctest: +SKIP
"""

from compress.distill import DistillConfig, distill
from compress.pipeline import RunResult, load_model, run
from compress.recipe import Recipe, RecipeStep, list_presets, load_recipe
from compress.steps import apply
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
    "apply",
    "distill",
    "list_presets",
    "load_model",
    "load_recipe",
    "load_variant",
    "run",
]
