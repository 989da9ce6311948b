"""slimlens compression: variants of a model that are smaller and faster, and the steps that make them."""

from compress.variant import OnnxVariant, TorchVariant, Variant, VariantError, load_variant

__all__ = ["OnnxVariant", "TorchVariant", "Variant", "VariantError", "load_variant"]
