"""ONNX Runtime int8: dynamic (MatMul/Gemm/LSTM weights) and calibrated static QDQ, each from an fp32 export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from compress.context import CompressionData
from compress.export import check_opset
from compress.finetune import clone
from compress.onnx_utils import (
    CALIBRATION_METHODS,
    QUANT_TYPES,
    layer_input_names,
    preprocess,
    quantize_dynamic_file,
    quantize_static_file,
)
from compress.quantize.common import (
    STATIC_FAMILIES,
    Progress,
    QuantizationError,
    count_int8_initializers,
    export_fp32,
    no_progress,
    require_static_family,
    resolve_reduce_range,
    step_record,
)
from compress.steps import register_step
from compress.variant import OnnxVariant, removed_with, step_folder


@dataclass(frozen=True)
class OrtDynamicInt8Config:
    """ONNX Runtime dynamic int8: int8 MatMul/Gemm weights and DynamicQuantizeLSTM for the LSTM op."""

    per_channel: bool = False
    opset: int = 18
    name: str = "int8-dynamic-onnx"

    def __post_init__(self) -> None:
        check_opset(self.opset)


@register_step("quantize_dynamic_onnx", OrtDynamicInt8Config)
def quantize_dynamic_onnx(model: nn.Module, config: OrtDynamicInt8Config, data: CompressionData,
                          progress: Progress = no_progress) -> OnnxVariant:
    """Export to ONNX, then ``onnxruntime.quantization.quantize_dynamic``; refuses a model with nothing it can quantize."""
    unquantized = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.GRU | nn.RNN)), None)
    if unquantized is not None:  # its weights would stay float in a file named int8
        name, layer = unquantized
        way_out = ("use quantize_dynamic (PyTorch int8 of GRU layers) instead" if isinstance(layer, nn.GRU)
                   else "no int8 step quantizes it; weight-sharing or prune-unstructured shrink its file")
        raise QuantizationError(f"ONNX Runtime's dynamic int8 quantizes the LSTM op but not {type(layer).__name__}: "
                                f"{data.model_name}'s {type(layer).__name__} layer {name!r} would stay in float; {way_out}")
    with step_folder() as folder:
        progress("exporting to ONNX for dynamic int8")
        fp32, exporter = export_fp32(model, data, config.opset, folder)
        progress("ONNX Runtime dynamic int8")
        notes: list[str] = []
        target = quantize_dynamic_file(fp32, folder / f"{config.name}.onnx", per_channel=config.per_channel, notes=notes)
        if count_int8_initializers(target) == 0:
            raise QuantizationError(
                f"ONNX Runtime dynamic int8 found no MatMul/Gemm/LSTM weights in {data.model_name} (family {data.family}); "
                "use quantize_static_onnx instead"
            )
    step = step_record("quantize_dynamic_onnx", config, backend="onnxruntime.quantization.quantize_dynamic", exported_with=exporter,
                       **({"quantizer_warnings": sorted(set(notes))} if notes else {}))
    variant = OnnxVariant(name=config.name, steps=[step], source=dict(data.source), artifact=target, stand_in=clone(model).eval())
    return removed_with(variant, folder)


@dataclass(frozen=True)
class StaticInt8Config:
    """Calibrated static int8 in ONNX QDQ format, per-channel int8 weights.

    uint8 activations with int8 weights are the default because they are the fast pair on x86
    CPUs without VNNI (AVX2 multiplies u8 by s8). Such CPUs add pairs of u8*s8 products in int16,
    which can saturate; ``reduce_range`` (7-bit weights) avoids that. ``None`` chooses it for the
    CPU at hand: on for an x86 CPU without VNNI (on this AVX2 machine it turned a 0.5 point drop of
    seed-cnn into none), off otherwise. The step records the value used.
    """

    calibration: str = "minmax"  # minmax, entropy or percentile
    percentile: float = 99.999
    samples: int = 64  # calibration inputs drawn from the training split
    per_channel: bool = True
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool | None = None
    opset: int = 18
    name: str = "int8-static-onnx"

    # the accuracy-aware search tries each; all give the same size, so it keeps the one with the smallest drop
    strength_field: ClassVar[str] = "calibration"
    strength_values: ClassVar[tuple[str, ...]] = ("minmax", "percentile", "entropy")
    # a recipe that sets percentile with another calibration would have it silently ignored
    applies_only_with: ClassVar[dict[str, tuple[str, str]]] = {"percentile": ("calibration", "percentile")}

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise QuantizationError(f"unknown calibration method {self.calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}")
        if self.samples < 1:
            raise QuantizationError(f"static int8 needs calibration inputs: samples={self.samples} must be at least 1")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizationError(f"percentile={self.percentile} must be in (50, 100]")
        for role, value in (("activations", self.activations), ("weights", self.weights)):
            if value not in QUANT_TYPES:
                raise QuantizationError(f"{role}={value!r} must be one of {', '.join(QUANT_TYPES)}")
        if (self.activations, self.weights) == ("int8", "uint8"):  # ONNX Runtime has no kernels for this pair
            raise QuantizationError("activations='int8' with weights='uint8' is not a pair ONNX Runtime quantizes; "
                                    "use uint8/int8 (the default), int8/int8 or uint8/uint8")
        check_opset(self.opset)


@register_step("quantize_static_onnx", StaticInt8Config, families=STATIC_FAMILIES)
def quantize_static_onnx(model: nn.Module, config: StaticInt8Config, data: CompressionData,
                         progress: Progress = no_progress, layer_ranges: list[tuple[Any, tuple[float, float]]] = (),
                         stand_in: nn.Module | None = None) -> OnnxVariant:
    """Export to ONNX, pre-process, calibrate on ``config.samples`` training inputs and quantize to int8 QDQ.

    ``layer_ranges`` (weight array, input (min, max)) fixes the input range of the layer holding each
    weight instead of calibrating it (QAT's learned ranges); ``stand_in`` replaces the float copy of ``model``.
    """
    require_static_family(data, "static int8", "ONNX Runtime cannot calibrate recurrent ops (LSTM, GRU)", model)
    calibration = data.inputs(config.samples)
    if len(calibration) == 0:
        raise QuantizationError(f"no calibration inputs for {data.model_name}: its training split is empty")
    reduce_range = resolve_reduce_range(config.reduce_range)
    with step_folder() as folder:
        progress("exporting to ONNX for static int8")
        fp32, exporter = export_fp32(model, data, config.opset, folder)
        prepared = preprocess(fp32, folder / "prepared.onnx")
        names = layer_input_names(prepared, [weight for weight, _ in layer_ranges])
        fixed: dict[str, tuple[float, float]] = {}
        for name, (_, (low, high)) in zip(names, layer_ranges):
            if name is not None:  # a tensor read by two layers (a block input and its downsample) keeps both ranges
                old = fixed.get(name, (low, high))
                fixed[name] = (min(old[0], low), max(old[1], high))
        progress(f"calibrating static int8 ({config.calibration}, {len(calibration)} inputs)")
        notes: list[str] = []
        target = quantize_static_file(
            prepared, folder / f"{config.name}.onnx", calibration, method=config.calibration, percentile=config.percentile,
            per_channel=config.per_channel, activations=config.activations, weights=config.weights,
            reduce_range=reduce_range, ranges=fixed, preprocessed=True, notes=notes,
        )
    extra: dict[str, Any] = {"fixed_input_ranges": f"{sum(n is not None for n in names)} of {len(layer_ranges)} layers"} if layer_ranges else {}
    if notes:  # e.g. a GroupNorm scale that per-channel quantization could not split by channel; the variant's accuracy shows the effect
        extra["quantizer_warnings"] = sorted(set(notes))
    step = step_record("quantize_static_onnx", config, backend="onnxruntime.quantization.quantize_static (QDQ)",
                        exported_with=exporter, calibration_inputs=len(calibration), reduce_range_used=reduce_range, **extra)
    # the float model it was quantized from: what gradient explanations of this variant run on
    float_model = stand_in if stand_in is not None else clone(model).eval()
    variant = OnnxVariant(name=config.name, steps=[step], source=dict(data.source), artifact=target, stand_in=float_model)
    return removed_with(variant, folder)
