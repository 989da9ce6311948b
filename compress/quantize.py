"""Quantization steps: dynamic int8 (PyTorch and ONNX Runtime), static int8 PTQ (ONNX Runtime QDQ), fp16/bf16.

Each step reads like torchao's ``quantize_(model, config)``: it takes a model, a small frozen config
and the model's ``CompressionData``, never changes the model, and returns a new ``Variant``::

    >>> import zoo
    >>> from compress.context import data_for
    >>> from compress.quantize import StaticInt8Config, quantize_static_onnx
    >>> variant = quantize_static_onnx(zoo.load("seed-cnn"), StaticInt8Config(calibration="entropy"), data_for("seed-cnn"))
    >>> variant.format
    'onnx'

Artifacts: ONNX variants are the quantized .onnx file. A PyTorch dynamic-int8 variant is saved as
safetensors holding the int8 weights with their scales and zero points (the float biases and other
tensors beside them), so its size on disk is the int8 size; loading rebuilds the architecture,
re-applies the same dynamic quantization and puts back the exact stored int8 weights.
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import onnx
import torch
from torch import nn

from compress.context import CompressionData
from compress.export import export_onnx, onnx_exporter
from compress.finetune import clone, finetune
from compress.onnx_utils import CALIBRATION_METHODS, QUANT_TYPES, cpu_has_vnni, quantize_dynamic_file, quantize_static_file
from compress.steps import register_step
from compress.variant import OnnxVariant, TorchVariant, _fit_shapes, _rebuild_module
from zoo.cards import write_atomic
from zoo.errors import SlimlensError
from zoo.weights import read_state_dict

Progress = Callable[[str], None]
DYNAMIC_LAYERS = {"linear": nn.Linear, "lstm": nn.LSTM}
HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# ONNX Runtime has no static (calibrated) quantization of the LSTM op; dynamic int8 handles it.
STATIC_FAMILIES = ("cnn", "gan", "mlp", "autoencoder", "custom")


class QuantizationError(SlimlensError):
    """A quantization step does not apply to this model, or its settings are invalid."""


def _no_progress(message: str) -> None:
    """Default progress callback: say nothing."""


def resolve_reduce_range(flag: bool | None) -> bool:
    """``flag`` itself, or for ``None`` whether this CPU needs 7-bit weights (x86 without VNNI)."""
    if flag is not None:
        return flag
    return platform.machine().lower() in ("x86_64", "amd64") and not cpu_has_vnni()


def _step_record(name: str, config: Any, **extra: Any) -> dict[str, Any]:
    return {"step": name, **asdict(config), **extra}


def _workdir() -> Path:
    """A fresh folder for a step's ONNX files; the variant's ``save`` copies them out."""
    return Path(tempfile.mkdtemp(prefix="slimlens-"))


def _export_fp32(model: nn.Module, data: CompressionData, opset: int, folder: Path) -> tuple[Path, dict[str, str]]:
    path = export_onnx(model, data.example_input(2), folder / "fp32.onnx", opset=opset)
    return path, onnx_exporter(path)


def _count_int8_initializers(path: Path) -> int:
    int_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return sum(init.data_type in int_types for init in onnx.load(str(path)).graph.initializer)


# ---------------------------------------------------------------- dynamic int8, PyTorch


@dataclass(frozen=True)
class DynamicInt8Config:
    """PyTorch dynamic int8: int8 weights for the named layer types, activations quantized per batch at run time."""

    layers: tuple[str, ...] = ("linear", "lstm")
    name: str = "int8-dynamic"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layers) - set(DYNAMIC_LAYERS))
        if unknown or not self.layers:
            raise QuantizationError(f"dynamic int8 layers {unknown or '()'} not supported; choose from {sorted(DYNAMIC_LAYERS)}")


def _quantize_dynamic_module(model: nn.Module, layers: tuple[str, ...]) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated (torchao replaces it); recorded in the step
        return torch_quantize_dynamic(model, {DYNAMIC_LAYERS[k] for k in layers}, dtype=torch.qint8, inplace=False)


@register_step("quantize_dynamic", DynamicInt8Config)
def quantize_dynamic(model: nn.Module, config: DynamicInt8Config, data: CompressionData,
                     progress: Progress = _no_progress) -> "Int8TorchVariant":
    """Dynamic int8 of Linear/LSTM layers with ``torch.ao.quantization.quantize_dynamic`` (deprecated in torch 2.x, still shipped)."""
    types = tuple(DYNAMIC_LAYERS[k] for k in config.layers)
    if not any(isinstance(m, types) for m in model.modules()):
        raise QuantizationError(
            f"{data.model_name} (family {data.family}) has no {'/'.join(config.layers)} layer for dynamic int8; "
            "use quantize_static_onnx (calibrated int8 of convolutions) instead"
        )
    progress(f"dynamic int8 of {', '.join(config.layers)} layers")
    quantized = _quantize_dynamic_module(clone(model).eval(), config.layers)
    tensors, int8 = int8_state(quantized)
    step = _step_record("quantize_dynamic", config, backend="torch.ao.quantization.quantize_dynamic", engine=torch.backends.quantized.engine)
    return Int8TorchVariant(name=config.name, steps=[step], source=dict(data.source), module=quantized,
                            stand_in=_dequantized_module(model, tensors, int8), layers=config.layers)


def _quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from torch.ao.nn.quantized import dynamic as qdynamic

    return [(name, m) for name, m in model.named_modules() if isinstance(m, qdynamic.Linear | qdynamic.LSTM)]


def _weights_of(layer: nn.Module) -> dict[str, torch.Tensor | None]:
    """A dynamic-quantized layer's weights (quantized tensors) and biases (float), under the float layer's names."""
    from torch.ao.nn.quantized import dynamic as qdynamic

    if isinstance(layer, qdynamic.Linear):
        return {"weight": layer.weight(), "bias": layer.bias()}
    packed = layer._weight_bias()
    return {**packed["weight"], **packed["bias"]}


def int8_state(quantized: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Flat tensors to store (int8 weights with scale/zero point, float rest) and which keys are int8."""
    tensors: dict[str, torch.Tensor] = {}
    int8: dict[str, dict[str, Any]] = {}
    quantized_prefixes = []
    for prefix, layer in _quantized_layers(quantized):
        quantized_prefixes.append(prefix + ".")
        for pname, value in _weights_of(layer).items():
            key = f"{prefix}.{pname}"
            if value is None:
                continue
            if not value.is_quantized:
                tensors[key] = value.detach().float().contiguous()
                continue
            tensors[key] = value.int_repr().contiguous()
            if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                tensors[key + ".scale"] = value.q_per_channel_scales().double()
                tensors[key + ".zero_point"] = value.q_per_channel_zero_points().long()
                int8[key] = {"axis": int(value.q_per_channel_axis())}
            else:
                tensors[key + ".scale"] = torch.tensor(value.q_scale(), dtype=torch.float64)
                tensors[key + ".zero_point"] = torch.tensor(value.q_zero_point(), dtype=torch.int64)
                int8[key] = {"axis": None}
    for key, value in quantized.state_dict().items():  # everything outside the quantized layers stays float
        if isinstance(value, torch.Tensor) and not any(key.startswith(p) for p in quantized_prefixes):
            tensors[key] = value.detach().contiguous()
    return tensors, int8


def _qtensor(tensors: dict[str, torch.Tensor], key: str, axis: int | None) -> torch.Tensor:
    values, scale, zero = tensors[key], tensors[key + ".scale"], tensors[key + ".zero_point"]
    if axis is None:
        return torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero))
    return torch._make_per_channel_quantized_tensor(values, scale, zero, axis)


def _float_state(tensors: dict[str, torch.Tensor], int8: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The float state dict the int8 weights stand for: dequantized weights, the rest as stored."""
    scales = {f"{k}.scale" for k in int8} | {f"{k}.zero_point" for k in int8}
    state = {k: v for k, v in tensors.items() if k not in int8 and k not in scales}
    state.update({k: _qtensor(tensors, k, meta["axis"]).dequantize() for k, meta in int8.items()})
    return state


def _dequantized_module(float_model: nn.Module, tensors: dict[str, torch.Tensor], int8: dict[str, dict[str, Any]]) -> nn.Module:
    """A float copy computing with the dequantized int8 weights: the gradient-friendly stand-in for explanations."""
    stand_in = clone(float_model)
    state = _float_state(tensors, int8)
    _fit_shapes(stand_in, state)
    stand_in.load_state_dict(state)
    return stand_in.eval()


def _restore_int8(quantized: nn.Module, tensors: dict[str, torch.Tensor], int8: dict[str, dict[str, Any]]) -> None:
    """Put the exact stored int8 weights back into freshly quantized layers (re-quantizing is not bit-exact)."""
    from torch.ao.nn.quantized import dynamic as qdynamic

    def value(key: str) -> torch.Tensor | None:
        return _qtensor(tensors, key, int8[key]["axis"]) if key in int8 else tensors.get(key)

    for prefix, layer in _quantized_layers(quantized):
        names = _weights_of(layer)
        weights = {pname: value(f"{prefix}.{pname}") for pname in names}
        if isinstance(layer, qdynamic.Linear):
            layer.set_weight_bias(weights["weight"], weights["bias"])
        else:
            layer.set_weight_bias(weights)


@dataclass
class Int8TorchVariant(TorchVariant):
    """A dynamic-int8 PyTorch module; saved as int8 weights + scales in safetensors, so its file is its int8 size."""

    layers: tuple[str, ...] = ("linear", "lstm")

    def metadata(self) -> dict[str, Any]:
        """Metadata naming the int8 loader and the layer types to re-quantize."""
        return {**super().metadata(), "loader": "compress.quantize:load_int8_variant", "dynamic_layers": list(self.layers)}

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.safetensors`` (int8 weights, scales, zero points, float rest) and metadata."""
        from safetensors.torch import save as save_safetensors_bytes

        directory = Path(directory)
        tensors, int8 = int8_state(self.module)
        blob = save_safetensors_bytes(tensors)
        self.artifact = directory / f"{self.name}.safetensors"
        write_atomic(self.artifact, blob)
        return self._write_metadata(directory, {"sha256": hashlib.sha256(blob).hexdigest(), "int8_weights": int8})


def load_int8_variant(meta: dict[str, Any], common: dict[str, Any]) -> Int8TorchVariant:
    """Rebuild a saved dynamic-int8 variant: architecture, dequantized float weights, quantization, exact int8 weights."""
    tensors = read_state_dict(common["artifact"], expected_sha256=meta.get("sha256"))
    int8 = meta["int8_weights"]
    float_model = _rebuild_module(meta["source"])
    state = _float_state(tensors, int8)
    _fit_shapes(float_model, state)
    float_model.load_state_dict(state)
    layers = tuple(meta["dynamic_layers"])
    quantized = _quantize_dynamic_module(float_model.eval(), layers)
    _restore_int8(quantized, tensors, int8)
    return Int8TorchVariant(**common, module=quantized.eval(), stand_in=float_model.eval(), layers=layers)


# ---------------------------------------------------------------- dynamic int8, ONNX Runtime


@dataclass(frozen=True)
class OrtDynamicInt8Config:
    """ONNX Runtime dynamic int8: int8 MatMul/Gemm weights and DynamicQuantizeLSTM for the LSTM op."""

    per_channel: bool = False
    opset: int = 18
    name: str = "int8-dynamic-onnx"


@register_step("quantize_dynamic_onnx", OrtDynamicInt8Config)
def quantize_dynamic_onnx(model: nn.Module, config: OrtDynamicInt8Config, data: CompressionData,
                          progress: Progress = _no_progress) -> OnnxVariant:
    """Export to ONNX, then ``onnxruntime.quantization.quantize_dynamic``; refuses a model with nothing it can quantize."""
    folder = _workdir()
    progress("exporting to ONNX for dynamic int8")
    fp32, exporter = _export_fp32(model, data, config.opset, folder)
    progress("ONNX Runtime dynamic int8")
    target = quantize_dynamic_file(fp32, folder / f"{config.name}.onnx", per_channel=config.per_channel)
    if _count_int8_initializers(target) == 0:
        raise QuantizationError(
            f"ONNX Runtime dynamic int8 found no MatMul/Gemm/LSTM weights in {data.model_name} (family {data.family}); "
            "use quantize_static_onnx instead"
        )
    step = _step_record("quantize_dynamic_onnx", config, backend="onnxruntime.quantization.quantize_dynamic", exported_with=exporter)
    return OnnxVariant(name=config.name, steps=[step], source=dict(data.source), artifact=target)


# ---------------------------------------------------------------- static int8 PTQ, ONNX Runtime QDQ


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

    # the accuracy-aware search tries these in order, keeping the first within the tolerated drop
    strength_field: ClassVar[str] = "calibration"
    strength_values: ClassVar[tuple[str, ...]] = ("minmax", "percentile", "entropy")

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


@register_step("quantize_static_onnx", StaticInt8Config)
def quantize_static_onnx(model: nn.Module, config: StaticInt8Config, data: CompressionData,
                         progress: Progress = _no_progress) -> OnnxVariant:
    """Export to ONNX, pre-process, calibrate on ``config.samples`` training inputs and quantize to int8 QDQ."""
    if data.family not in STATIC_FAMILIES:
        raise QuantizationError(
            f"static int8 does not apply to {data.model_name} (family {data.family}): ONNX Runtime cannot calibrate "
            "the LSTM op; use quantize_dynamic or quantize_dynamic_onnx instead"
        )
    calibration = data.inputs(config.samples)
    if len(calibration) == 0:
        raise QuantizationError(f"no calibration inputs for {data.model_name}: its training split is empty")
    reduce_range = resolve_reduce_range(config.reduce_range)
    folder = _workdir()
    progress("exporting to ONNX for static int8")
    fp32, exporter = _export_fp32(model, data, config.opset, folder)
    progress(f"calibrating static int8 ({config.calibration}, {len(calibration)} inputs)")
    target = quantize_static_file(
        fp32, folder / f"{config.name}.onnx", calibration, method=config.calibration, percentile=config.percentile,
        per_channel=config.per_channel, activations=config.activations, weights=config.weights,
        reduce_range=reduce_range,
    )
    step = _step_record("quantize_static_onnx", config, backend="onnxruntime.quantization.quantize_static (QDQ)",
                        exported_with=exporter, calibration_inputs=len(calibration), reduce_range_used=reduce_range)
    return OnnxVariant(name=config.name, steps=[step], source=dict(data.source), artifact=target)


# ---------------------------------------------------------------- fp16 / bf16


@dataclass(frozen=True)
class HalfPrecisionConfig:
    """All weights and computation in float16 or bfloat16; the variant still takes and returns float32."""

    dtype: str = "float16"
    name: str = ""  # defaults to the dtype's name

    def __post_init__(self) -> None:
        if self.dtype not in HALF_DTYPES:
            raise QuantizationError(f"dtype={self.dtype!r} must be one of {', '.join(HALF_DTYPES)}")


@dataclass
class HalfTorchVariant(TorchVariant):
    """A module whose weights are float16/bfloat16; inputs are cast on the way in, outputs back to float32."""

    dtype: str = "float16"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        device = next(self.module.parameters()).device
        with torch.inference_mode():
            return self.module(batch.to(device=device, dtype=HALF_DTYPES[self.dtype])).float().cpu()

    def metadata(self) -> dict[str, Any]:
        """Metadata naming the half-precision loader and dtype."""
        return {**super().metadata(), "loader": "compress.quantize:load_half_variant", "dtype": self.dtype}


@register_step("half_precision", HalfPrecisionConfig)
def half_precision(model: nn.Module, config: HalfPrecisionConfig, data: CompressionData,
                   progress: Progress = _no_progress) -> HalfTorchVariant:
    """A copy of ``model`` in float16/bfloat16 (halves the file; fast on GPUs, mostly not on CPUs)."""
    progress(f"casting to {config.dtype}")
    module = clone(model).eval().to(HALF_DTYPES[config.dtype])
    return HalfTorchVariant(name=config.name or config.dtype, steps=[_step_record("half_precision", config)],
                            source=dict(data.source), module=module, stand_in=clone(model).eval(), dtype=config.dtype)


def load_half_variant(meta: dict[str, Any], common: dict[str, Any]) -> HalfTorchVariant:
    """Rebuild a saved fp16/bf16 variant in its own dtype (a plain load would silently upcast to float32)."""
    state = read_state_dict(common["artifact"], expected_sha256=meta.get("sha256"))
    module = _rebuild_module(meta["source"])
    _fit_shapes(module, state)
    module.load_state_dict(state)
    stand_in = clone(module).eval()
    return HalfTorchVariant(**common, module=module.to(HALF_DTYPES[meta["dtype"]]).eval(), stand_in=stand_in, dtype=meta["dtype"])


# ---------------------------------------------------------------- quantization-aware training


QAT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass(frozen=True)
class QatConfig:
    """Quantization-aware fine-tuning, then deployment as static int8 ONNX QDQ.

    During fine-tuning every Conv/ConvTranspose/Linear sees its weights on the per-channel
    symmetric int8 grid ONNX Runtime will use (scale = max|w| / 127) and its input on a uint8
    grid (running min/max), with straight-through gradients. BatchNorm is first folded into the
    convolution before it, as ONNX Runtime's pre-processing will fold it. The fine-tuned weights
    are then quantized by ONNX Runtime to exactly that weight grid; activation ranges are calibrated.
    """

    epochs: float = 1.0
    lr: float = 1e-4
    calibration: str = "minmax"
    samples: int = 64
    reduce_range: bool | None = None  # None: as static int8 chooses it for this CPU
    opset: int = 18
    name: str = "int8-qat-onnx"

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise QuantizationError(f"epochs={self.epochs} must be positive")
        StaticInt8Config(calibration=self.calibration, samples=self.samples)  # same checks as static int8


class _WeightFakeQuant(nn.Module):
    """Parametrization: the weight rounded to its symmetric per-channel int8 grid (straight-through gradient)."""

    def __init__(self, axis: int, qmax: int):
        super().__init__()
        self.axis, self.qmax = axis, qmax

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(weight.dim()) if d != self.axis]
        scale = (weight.detach().abs().amax(dim=dims) / self.qmax).clamp(min=1e-12).float()
        zero = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, self.axis, -self.qmax, self.qmax)


class _ActivationFakeQuant(nn.Module):
    """A tensor rounded to a uint8 grid over its running min/max (zero kept exact, as ONNX Runtime requires)."""

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            low, high = x.detach().min(), x.detach().max()
            m = torch.where(self.seen, torch.tensor(self.momentum), torch.tensor(1.0))
            self.low.lerp_(low, m)
            self.high.lerp_(high, m)
            self.seen.fill_(True)
        low, high = float(self.low.clamp(max=0)), float(self.high.clamp(min=0))
        scale = max((high - low) / 255, 1e-8)
        return torch.fake_quantize_per_tensor_affine(x, scale, int(round(-low / scale)), 0, 255)


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """Conv+BatchNorm pairs folded into one Conv (a torch.fx copy); the model itself when it has no BatchNorm."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval())
    except Exception as exc:  # torch.fx cannot trace data-dependent Python control flow
        raise QuantizationError(f"cannot fold BatchNorm for QAT: torch.fx could not trace the model ({str(exc).splitlines()[0]})") from None


def _attach_fake_quant(model: nn.Module, qmax: int) -> list[Any]:
    """Fake-quantize every QAT layer's weight and input in place; returns the hook handles to remove later."""
    from torch.nn.utils import parametrize

    handles = []
    for layer in [m for m in model.modules() if isinstance(m, QAT_LAYERS)]:
        axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0  # the output-channel axis ONNX Runtime quantizes along
        parametrize.register_parametrization(layer, "weight", _WeightFakeQuant(axis, qmax))
        layer.input_fake_quant = _ActivationFakeQuant()
        handles.append(layer.register_forward_pre_hook(lambda mod, args: (mod.input_fake_quant(args[0]), *args[1:])))
    return handles


def _detach_fake_quant(model: nn.Module, handles: list[Any]) -> nn.Module:
    """Remove the fake-quant hooks, keeping each weight at its int8-grid value (so ONNX Runtime re-quantizes it exactly)."""
    from torch.nn.utils import parametrize

    for handle in handles:
        handle.remove()
    for layer in [m for m in model.modules() if isinstance(m, QAT_LAYERS)]:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        del layer.input_fake_quant
    return model.eval()


@register_step("qat", QatConfig)
def quantization_aware_training(model: nn.Module, config: QatConfig, data: CompressionData,
                                progress: Progress = _no_progress) -> OnnxVariant:
    """Fine-tune ``model`` under int8 fake quantization, then export it as a calibrated static int8 QDQ ONNX file."""
    if data.family not in STATIC_FAMILIES:
        raise QuantizationError(
            f"QAT does not apply to {data.model_name} (family {data.family}): its int8 deployment is ONNX Runtime "
            "static int8, which cannot calibrate the LSTM op; use quantize_dynamic or quantize_dynamic_onnx instead"
        )
    work = _fold_batchnorm(clone(model).eval())
    if work is model:
        work = clone(model)
    reduce_range = resolve_reduce_range(config.reduce_range)
    qmax = 64 if reduce_range else 127  # ONNX Runtime's symmetric weight range, 7-bit when reduced
    handles = _attach_fake_quant(work, qmax)
    progress(f"QAT: fine-tuning {config.epochs} epoch(s) under int8 fake quantization")
    teacher = model if data.task == "generation" else None  # a generator learns to match its original
    finetune(work, data, config.epochs, lr=config.lr, teacher=teacher, progress=progress)
    deployed = _detach_fake_quant(work, handles)
    static = StaticInt8Config(calibration=config.calibration, samples=config.samples, reduce_range=reduce_range,
                              opset=config.opset, name=config.name)
    variant = quantize_static_onnx(deployed, static, data, progress)
    variant.steps = [_step_record("qat", config, deployed_as=variant.steps[0])]
    variant.stand_in = deployed
    return variant


# ---------------------------------------------------------------- static int8, PyTorch-native (PT2E)


@dataclass(frozen=True)
class Pt2eInt8Config:
    """Static int8 the PyTorch-native way: torchao PT2E with X86InductorQuantizer, then torch.compile.

    ``compile=False`` keeps the converted program eager (reference int8 arithmetic, slow) for
    checking accuracy without paying for compilation.
    """

    samples: int = 64
    compile: bool = True
    name: str = "int8-pt2e"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise QuantizationError(f"PT2E int8 needs calibration inputs: samples={self.samples} must be at least 1")


class _FrozenCompiled(nn.Module):
    """``torch.compile`` of an int8 program, compiled (once per batch size) with Inductor's freezing on.

    Freezing lets Inductor pre-pack the int8 weights into oneDNN kernels. It is set around each call
    because passing it as a compile option fails in torch 2.14 (onednn.qconv_prepack has no fake
    kernel there); ``dynamic=False`` because with a symbolic batch the quantized-conv lowering fails
    a stride check.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def _compile_int8(program_module: nn.Module) -> nn.Module:
    return _FrozenCompiled(program_module)


def _drop_unused_tensors(graph_module: torch.fx.GraphModule) -> None:
    """Delete parameters the converted graph no longer reads (the float weights its int8 copies replaced)."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    names = [n for n, _ in graph_module.named_parameters()] + [n for n, _ in graph_module.named_buffers()]
    for name in names:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)


@dataclass
class Pt2eVariant(TorchVariant):
    """A PT2E int8 program, saved as a torch.export ``.pt2`` archive (int8 weights) and compiled on load."""

    program: Any = None  # torch.export.ExportedProgram of the int8 model
    compiled: bool = True

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # compiled graphs do not accept inference-mode tensors they did not trace with
            return self.module(batch).float()

    def metadata(self) -> dict[str, Any]:
        """Metadata naming the PT2E loader."""
        return {**super().metadata(), "loader": "compress.quantize:load_pt2e_variant", "compiled": self.compiled}

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.pt2`` (torch.export.save) and metadata."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.artifact = directory / f"{self.name}.pt2"
        partial = self.artifact.with_suffix(".pt2.partial")  # renamed into place so a crash leaves no half-written file
        torch.export.save(self.program, str(partial))
        partial.replace(self.artifact)
        return self._write_metadata(directory, {"sha256": hashlib.sha256(self.artifact.read_bytes()).hexdigest()})


def load_pt2e_variant(meta: dict[str, Any], common: dict[str, Any]) -> Pt2eVariant:
    """Load a saved PT2E int8 program and compile it as it was."""
    if meta.get("sha256") and hashlib.sha256(Path(common["artifact"]).read_bytes()).hexdigest() != meta["sha256"]:
        raise QuantizationError(f"{common['artifact']} does not match its metadata sha256 (corrupt or replaced)")
    program = torch.export.load(str(common["artifact"]))
    module = program.module()
    return Pt2eVariant(**common, module=_compile_int8(module) if meta.get("compiled") else module,
                       program=program, compiled=bool(meta.get("compiled")))


@register_step("quantize_pt2e", Pt2eInt8Config)
def quantize_pt2e(model: nn.Module, config: Pt2eInt8Config, data: CompressionData,
                  progress: Progress = _no_progress) -> Pt2eVariant:
    """torch.export → prepare_pt2e(X86InductorQuantizer) → calibrate → convert_pt2e → torch.compile (needs torchao)."""
    if data.family not in STATIC_FAMILIES:
        raise QuantizationError(
            f"PT2E static int8 does not apply to {data.model_name} (family {data.family}): X86InductorQuantizer "
            "does not quantize LSTM; use quantize_dynamic or quantize_dynamic_onnx instead"
        )
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise QuantizationError(f"PT2E int8 needs torchao ({exc}); pip install torchao, or use quantize_static_onnx") from None
    example = data.example_input(2)
    shapes = ({0: torch.export.Dim("batch")},)
    progress("PT2E: exporting and inserting observers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export/torchao deprecation chatter
        captured = torch.export.export(clone(model).eval(), (example,), dynamic_shapes=shapes).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            prepared(data.inputs(config.samples))
        converted = convert_pt2e(prepared)
        _drop_unused_tensors(converted)
        program = torch.export.export(converted, (example,), dynamic_shapes=shapes)
    module = program.module()
    if config.compile:
        progress("PT2E: torch.compile (each batch size compiles once)")
        module = _compile_int8(module)
        try:
            with torch.no_grad():
                module(example)
        except Exception as exc:  # Inductor raises many types; the reason is what the user needs
            raise QuantizationError(f"torch.compile of the PT2E int8 model failed ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]}); use compile=false or quantize_static_onnx") from None
    step = _step_record("quantize_pt2e", config, backend=f"torchao PT2E X86InductorQuantizer (torchao {_version('torchao')})")
    return Pt2eVariant(name=config.name, steps=[step], source=dict(data.source), module=module,
                       stand_in=clone(model).eval(), program=program, compiled=config.compile)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
