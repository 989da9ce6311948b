"""Quantization steps: dynamic int8 (PyTorch, ONNX Runtime), static int8 (ONNX Runtime QDQ, PT2E), QAT, fp16/bf16.

Each step reads like torchao's ``quantize_(model, config)``: it takes a model, a small frozen config
and the model's ``CompressionData``, never changes the model, and returns a new ``Variant``::

    >>> import zoo
    >>> from compress.context import data_for
    >>> from compress.quantize import StaticInt8Config, quantize_static_onnx
    >>> variant = quantize_static_onnx(zoo.load("seed-cnn"), StaticInt8Config(calibration="entropy"), data_for("seed-cnn"))
    >>> variant.format
    'onnx'

One module per technique: ``dynamic`` (PyTorch dynamic int8 and its int8 storage), ``ort_int8``
(ONNX Runtime dynamic and static int8), ``qat``, ``pt2e``, ``half``; ``common`` holds what they share.
Saved variants name their loader here (``compress.quantize:load_..._variant``) for ``load_variant``.
"""

from compress.quantize.common import QuantizationError, resolve_reduce_range
from compress.quantize.dynamic import DynamicInt8Config, Int8TorchVariant, load_int8_variant, quantize_dynamic
from compress.quantize.half import HalfPrecisionConfig, HalfTorchVariant, half_precision, load_half_variant
from compress.quantize.ort_int8 import OrtDynamicInt8Config, StaticInt8Config, quantize_dynamic_onnx, quantize_static_onnx
from compress.quantize.pt2e import Pt2eInt8Config, Pt2eVariant, load_pt2e_variant, quantize_pt2e
from compress.quantize.qat import QatConfig, quantization_aware_training

__all__ = [
    "DynamicInt8Config", "HalfPrecisionConfig", "HalfTorchVariant", "Int8TorchVariant", "OrtDynamicInt8Config",
    "Pt2eInt8Config", "Pt2eVariant", "QatConfig", "QuantizationError", "StaticInt8Config", "half_precision",
    "load_half_variant", "load_int8_variant", "load_pt2e_variant", "quantization_aware_training", "quantize_dynamic",
    "quantize_dynamic_onnx", "quantize_pt2e", "quantize_static_onnx", "resolve_reduce_range",
]
