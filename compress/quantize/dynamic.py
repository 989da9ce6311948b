"""PyTorch dynamic int8 of Linear, LSTM and GRU layers, stored as int8 weights with scales in safetensors.

The variant's file holds the int8 weights, their scales and zero points, and the float biases and
other tensors, so its size on disk is the int8 size. Loading rebuilds the architecture, re-applies
the same dynamic quantization and puts back the exact stored int8 weights.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.context import CompressionData
from compress.finetune import clone
from compress.quantize.common import Progress, QuantizationError, no_progress, step_record
from compress.steps import register_step
from compress.variant import TorchVariant, _fit_shapes, _rebuild_module, conv_groups
from zoo.cards import write_atomic
from zoo.weights import read_state_dict

DYNAMIC_LAYERS = {"linear": nn.Linear, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class DynamicInt8Config:
    """PyTorch dynamic int8: int8 weights for the named layer types, activations quantized per batch at run time."""

    layers: tuple[str, ...] = ("linear", "lstm", "gru")
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
                     progress: Progress = no_progress) -> "Int8TorchVariant":
    """Dynamic int8 of Linear/LSTM/GRU layers with ``torch.ao.quantization.quantize_dynamic`` (deprecated in torch 2.x, still shipped)."""
    types = tuple(DYNAMIC_LAYERS[k] for k in config.layers)
    if not any(isinstance(m, types) for m in model.modules()):
        raise QuantizationError(
            f"{data.model_name} (family {data.family}) has no {'/'.join(config.layers)} layer for dynamic int8; "
            "use quantize_static_onnx (calibrated int8 of convolutions) instead"
        )
    plain_rnn = next((name for name, m in model.named_modules() if type(m) is nn.RNN), None)
    if plain_rnn is not None:  # its weights would stay float in a file named int8
        raise QuantizationError(f"PyTorch dynamic int8 has no RNN layer: {data.model_name}'s RNN layer {plain_rnn!r} would stay in "
                                "float; weight-sharing or prune-unstructured shrink its file")
    progress(f"dynamic int8 of {', '.join(config.layers)} layers")
    quantized = _quantize_dynamic_module(clone(model).eval(), config.layers)
    tensors, int8 = int8_state(quantized)
    step = step_record("quantize_dynamic", config, backend="torch.ao.quantization.quantize_dynamic", engine=torch.backends.quantized.engine)
    return Int8TorchVariant(name=config.name, steps=[step], source=dict(data.source), module=quantized,
                            stand_in=_dequantized_module(model, tensors, int8), layers=config.layers)


def _quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from torch.ao.nn.quantized import dynamic as qdynamic

    return [(name, m) for name, m in model.named_modules() if isinstance(m, qdynamic.Linear | qdynamic.LSTM | qdynamic.GRU)]


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
    with warnings.catch_warnings():  # the same deprecation of torch.ao quantization that the step records
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated", category=UserWarning)
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
    _fit_shapes(stand_in, state, conv_groups(float_model))
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

    layers: tuple[str, ...] = ("linear", "lstm", "gru")

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
        return self._write_metadata(directory, {"sha256": hashlib.sha256(blob).hexdigest(), "int8_weights": int8, "groups": conv_groups(self.module)})


def load_int8_variant(meta: dict[str, Any], common: dict[str, Any]) -> Int8TorchVariant:
    """Rebuild a saved dynamic-int8 variant: architecture, dequantized float weights, quantization, exact int8 weights."""
    tensors = read_state_dict(common["artifact"], expected_sha256=meta.get("sha256"))
    int8 = meta["int8_weights"]
    float_model = _rebuild_module(meta["source"])
    state = _float_state(tensors, int8)
    _fit_shapes(float_model, state, meta.get("groups"))
    float_model.load_state_dict(state)
    layers = tuple(meta["dynamic_layers"])
    quantized = _quantize_dynamic_module(float_model.eval(), layers)
    _restore_int8(quantized, tensors, int8)
    return Int8TorchVariant(**common, module=quantized.eval(), stand_in=float_model.eval(), layers=layers)
