"""What every quantization step shares: its error type, step records, work folders and the fp32 export."""

from __future__ import annotations

import contextlib
import platform
import shutil
import tempfile
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import onnx
from torch import nn

from compress.context import CompressionData
from compress.export import export_onnx, onnx_exporter
from compress.onnx_utils import cpu_has_vnni
from compress.variant import Variant
from zoo.errors import SlimlensError

Progress = Callable[[str], None]
# ONNX Runtime has no static (calibrated) quantization of the LSTM op; dynamic int8 handles it.
STATIC_FAMILIES = ("cnn", "gan", "mlp", "autoencoder", "custom")


class QuantizationError(SlimlensError):
    """A quantization step does not apply to this model, or its settings are invalid."""


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


@contextlib.contextmanager
def step_folder() -> Iterator[Path]:
    """A fresh folder for a step's ONNX files, removed if the step fails; hand it to ``removed_with`` on success."""
    folder = Path(tempfile.mkdtemp(prefix="slimlens-"))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def removed_with(variant: Variant, folder: Path) -> Variant:
    """``variant``, with ``folder`` deleted once the variant is garbage-collected (or at exit).

    A variant's ``save`` copies its artifact out, so the step's folder is only needed while the
    variant lives; called directly (outside ``compress.run``) a step then leaves nothing behind.
    """
    weakref.finalize(variant, shutil.rmtree, str(folder), True)
    return variant


def export_fp32(model: nn.Module, data: CompressionData, opset: int, folder: Path) -> tuple[Path, dict[str, str]]:
    """The model as fp32 ONNX in ``folder``, and which exporter wrote it."""
    path = export_onnx(model, data.example_input(2), folder / "fp32.onnx", opset=opset)
    return path, onnx_exporter(path)


def count_int8_initializers(path: Path) -> int:
    """How many weights of an ONNX file are stored as 8-bit integers."""
    int_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return sum(init.data_type in int_types for init in onnx.load(str(path)).graph.initializer)
