"""What every quantization step shares: its error type, step records, work folders and the fp32 export."""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import onnx
from torch import nn

from compress.context import CompressionData
from compress.export import export_onnx, onnx_exporter
from compress.onnx_utils import cpu_has_vnni
from zoo.errors import SlimlensError

Progress = Callable[[str], None]
# ONNX Runtime has no static (calibrated) quantization of the LSTM op; dynamic int8 handles it.
STATIC_FAMILIES = ("cnn", "gan", "mlp", "autoencoder")


def output_channel_axis(module: nn.Module) -> int:
    """The weight axis ONNX Runtime quantizes per channel: 1 for a transposed convolution (in, out, kH, kW), else 0."""
    return 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0


class QuantizationError(SlimlensError):
    """A quantization step does not apply to this model, or its settings are invalid."""


def require_static_family(data: CompressionData, what: str, reason: str, model: nn.Module | None = None) -> None:
    """Refuse, in one line naming the way out, a static-int8 technique on a model it cannot quantize (an LSTM)."""
    # Named first: a user's recurrent model is as much refused for its layer as the zoo's LSTM is for its family,
    # and static int8 would quantize only the layers around it, leaving most weights in float under an "int8" name.
    recurrent = [name for name, m in (model.named_modules() if model is not None else ()) if isinstance(m, nn.RNNBase)]
    if recurrent:
        raise QuantizationError(f"{what} does not apply to {data.model_name}: {reason}, and its {type(model.get_submodule(recurrent[0])).__name__} "
                                f"layer {recurrent[0]!r} would stay in float; use quantize_dynamic or quantize_dynamic_onnx instead")
    # "custom": a user's model handed to a step directly, before run() gives it its family; the recurrent check above is what matters there
    if data.family not in (*STATIC_FAMILIES, "custom"):
        raise QuantizationError(f"{what} does not apply to {data.model_name} (family {data.family}): {reason}; "
                                "use quantize_dynamic or quantize_dynamic_onnx instead")


def no_progress(message: str) -> None:
    """Default progress callback: say nothing."""


def resolve_reduce_range(flag: bool | None) -> bool:
    """``flag`` itself, or for ``None`` whether this CPU needs 7-bit weights (x86 without VNNI)."""
    if flag is not None:
        return flag
    return platform.machine().lower() in ("x86_64", "amd64") and not cpu_has_vnni()


def step_record(name: str, config: Any, **extra: Any) -> dict[str, Any]:
    """The step as results.json records it: its name, its config's fields, and what it chose."""
    return {"step": name, **asdict(config), **extra}




def export_fp32(model: nn.Module, data: CompressionData, opset: int, folder: Path) -> tuple[Path, dict[str, str]]:
    """The model as fp32 ONNX in ``folder``, and which exporter wrote it."""
    path = export_onnx(model, data.example_input(2), folder / "fp32.onnx", opset=opset)
    return path, onnx_exporter(path)


def count_int8_initializers(path: Path) -> int:
    """How many weights of an ONNX file are stored as 8-bit integers."""
    int_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return sum(init.data_type in int_types for init in onnx.load(str(path)).graph.initializer)
