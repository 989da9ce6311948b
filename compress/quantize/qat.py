"""Quantization-aware training: fine-tune under int8 fake quantization, deploy as static int8 ONNX QDQ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.context import CompressionData
from compress.finetune import check_budget, clone, finetune
from compress.quantize.common import (
    STATIC_FAMILIES,
    Progress,
    QuantizationError,
    no_progress,
    output_channel_axis,
    require_static_family,
    resolve_reduce_range,
    step_record,
)
from compress.quantize.ort_int8 import StaticInt8Config, quantize_static_onnx
from compress.steps import register_step
from compress.variant import OnnxVariant


QAT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass(frozen=True)
class QatConfig:
    """Quantization-aware fine-tuning, then deployment as static int8 ONNX QDQ.

    During fine-tuning every Conv/ConvTranspose/Linear sees its weights on the per-channel
    symmetric int8 grid ONNX Runtime will use (scale = max|w| / 127) and its input on a uint8
    grid (running min/max), with straight-through gradients. BatchNorm is first folded into the
    convolution (plain or transposed) before it, as ONNX Runtime's pre-processing will fold it. The fine-tuned weights
    are then quantized by ONNX Runtime to exactly that weight grid, and each layer's input keeps the
    range it learned; only tensors QAT did not see (e.g. the output of a residual add) are calibrated.
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
        check_budget(self.epochs, self.lr)
        StaticInt8Config(calibration=self.calibration, samples=self.samples, opset=self.opset)  # same checks as static int8


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
        folded = fuse(model.eval())
    except Exception as exc:  # torch.fx cannot trace data-dependent Python control flow
        raise QuantizationError(f"cannot fold BatchNorm for QAT: torch.fx could not trace the model ({str(exc).splitlines()[0]})") from None
    return _fold_transposed(folded)


def _fold_transposed(folded: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fold the ConvTranspose+BatchNorm pairs that torch.fx's ``fuse`` leaves (it knows Conv and Linear only).

    ONNX Runtime's pre-processing folds these pairs too; left apart, QAT would train weights on a grid
    the deployed (folded) layer no longer has, and learn an input range for the wrong layer.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    modules = dict(folded.named_modules())
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for node in list(folded.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm) and isinstance(source, torch.fx.Node)
                and source.op == "call_module" and isinstance(modules.get(source.target), transposed) and len(source.users) == 1):
            continue
        bn = modules[node.target]
        # batch statistics at inference leave nothing fixed to fold; fuse_conv_bn_eval assumes one group
        if bn.running_mean is None or modules[source.target].groups != 1:
            continue
        parent, _, child = source.target.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, child, fuse_conv_bn_eval(modules[source.target], bn, transpose=True))
        node.replace_all_uses_with(source)
        folded.graph.erase_node(node)
    folded.graph.lint()
    folded.delete_all_unused_submodules()
    folded.recompile()
    return folded


def _attach_fake_quant(model: nn.Module, qmax: int) -> list[Any]:
    """Fake-quantize every QAT layer's weight and input in place; returns the hook handles to remove later."""
    from torch.nn.utils import parametrize

    handles = []
    for layer in [m for m in model.modules() if isinstance(m, QAT_LAYERS)]:
        parametrize.register_parametrization(layer, "weight", _WeightFakeQuant(output_channel_axis(layer), qmax))
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


@register_step("qat", QatConfig, families=STATIC_FAMILIES)
def quantization_aware_training(model: nn.Module, config: QatConfig, data: CompressionData,
                                progress: Progress = no_progress) -> OnnxVariant:
    """Fine-tune ``model`` under int8 fake quantization, then export it as a calibrated static int8 QDQ ONNX file."""
    require_static_family(data, "QAT", "its int8 deployment is ONNX Runtime static int8, which cannot calibrate recurrent ops (LSTM, GRU)", model)
    work = _fold_batchnorm(clone(model).eval())
    if work is model:
        work = clone(model)
    reduce_range = resolve_reduce_range(config.reduce_range)
    qmax = 64 if reduce_range else 127  # ONNX Runtime's symmetric weight range, 7-bit when reduced
    handles = _attach_fake_quant(work, qmax)
    progress(f"QAT: fine-tuning {config.epochs} epoch(s) under int8 fake quantization")
    teacher = model if data.matches_original else None  # a generator or discriminator learns to match its original
    finetune(work, data, config.epochs, lr=config.lr, teacher=teacher, progress=progress)
    ranges = _learned_ranges(work)
    deployed = _detach_fake_quant(work, handles)
    static = StaticInt8Config(calibration=config.calibration, samples=config.samples, reduce_range=reduce_range,
                              opset=config.opset, name=config.name)
    progress("QAT: exporting with the learned activation ranges")
    variant = quantize_static_onnx(deployed, static, data, progress, layer_ranges=ranges, stand_in=deployed)
    deployed_as = variant.steps[0]
    variant.steps = [step_record("qat", config, deployed_as=deployed_as, learned_input_ranges=deployed_as.pop("fixed_input_ranges"))]
    return variant


def _learned_ranges(model: nn.Module) -> list[tuple[Any, tuple[float, float]]]:
    """(int8-grid weight as numpy, learned input (min, max)) of every fake-quantized layer, zero kept inside the range."""
    found = []
    for layer in [m for m in model.modules() if isinstance(m, QAT_LAYERS)]:
        observer = layer.input_fake_quant
        found.append((layer.weight.detach().cpu().numpy(), (min(float(observer.low), 0.0), max(float(observer.high), 0.0))))
    return found
