"""ONNX Runtime quantization mechanics: pre-processing, a calibration reader over tensors, dynamic and static int8.

Every function reads one .onnx file and writes another; the steps in ``compress.quantize`` choose the settings.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic
from onnxruntime.quantization import quantize_static as ort_quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from compress.export import INPUT_NAME

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
# quantize_static leaves ONNX Runtime's entropy calibrator at 128 histogram bins for 128 quantized
# bins, which leaves one candidate threshold, max|x|: MinMax under another name. TensorRT's
# KL calibration (Migacz, 2017) searches 2,048 bins; we run the calibrator ourselves with those.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


class TensorCalibrationReader(CalibrationDataReader):
    """Feeds a tensor of model inputs to ONNX Runtime's calibrator in equal batches of at most ``batch_size``."""

    def __init__(self, inputs: torch.Tensor, batch_size: int = 32, input_name: str = INPUT_NAME):
        array = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        # The histogram calibrators stack every batch's outputs into one array, so a short last
        # batch breaks them: use the largest batch size that divides the inputs evenly.
        n = len(array)
        batch_size = next((d for d in range(min(batch_size, n), 0, -1) if n % d == 0), 1)
        self._batches = iter([{input_name: array[i : i + batch_size]} for i in range(0, len(array), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when the inputs are used up."""
        return next(self._batches, None)


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX); False if unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume the conservative answer
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def preprocess(source: str | Path, target: str | Path) -> Path:
    """ONNX Runtime's quantization pre-processing: shape inference and graph optimisation.

    It folds the weight re-ordering the dynamo exporter leaves around LSTM (without it the LSTM
    op is not quantized at all) and folds BatchNorm into convolutions before calibration.
    """
    quant_pre_process(str(source), str(target))
    return Path(target)


def quantize_dynamic_file(source: str | Path, target: str | Path, per_channel: bool = False, notes: list[str] | None = None) -> Path:
    """Dynamic int8: int8 weights for MatMul/Gemm/LSTM (DynamicQuantizeLSTM), activations quantized at run time; ``notes`` receives the quantizer's warnings."""
    with _quiet(notes), tempfile.TemporaryDirectory(prefix="slimlens-") as tmp:
        prepared = preprocess(source, Path(tmp) / "prepared.onnx")
        ort_quantize_dynamic(prepared, str(target), per_channel=per_channel, weight_type=QuantType.QInt8)
    return Path(target)


def quantize_static_file(
    source: str | Path,
    target: str | Path,
    calibration: torch.Tensor,
    method: str = "minmax",
    percentile: float = 99.999,
    per_channel: bool = True,
    activations: str = "uint8",
    weights: str = "int8",
    reduce_range: bool = False,
    ranges: dict[str, tuple[float, float]] | None = None,
    preprocessed: bool = False,
    notes: list[str] | None = None,
) -> Path:
    """Static int8 in QDQ format, activation ranges calibrated on ``calibration`` with ``method``.

    ``ranges`` fixes the (min, max) of named tensors instead of calibrating them (learned QAT ranges);
    ``preprocessed`` says ``source`` already went through :func:`preprocess`, so the names match;
    ``notes`` receives the quantizer's warnings.
    """
    extra: dict = {"CalibPercentile": percentile} if method == "percentile" else {}
    with _quiet(notes), tempfile.TemporaryDirectory(prefix="slimlens-") as tmp:
        prepared = Path(source) if preprocessed else preprocess(source, Path(tmp) / "prepared.onnx")
        overrides = dict(ranges or {})
        if method == "entropy":  # fixed ranges (QAT's) still win over calibrated ones
            overrides = {**entropy_ranges(prepared, calibration, Path(tmp)), **overrides}
        if overrides:
            extra["TensorQuantOverrides"] = {name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
                                             for name, (low, high) in overrides.items()}
        ort_quantize_static(
            prepared, str(target), TensorCalibrationReader(calibration), quant_format=QuantFormat.QDQ,
            per_channel=per_channel, reduce_range=reduce_range, activation_type=QUANT_TYPES[activations],
            weight_type=QUANT_TYPES[weights], extra_options=extra,
            # entropy's ranges are all given above; the MinMax pass only satisfies ORT's interface
            calibrate_method=CalibrationMethod.MinMax if method == "entropy" else CALIBRATION_METHODS[method],
        )
    return Path(target)


def entropy_ranges(model: str | Path, calibration: torch.Tensor, workdir: Path) -> dict[str, tuple[float, float]]:
    """(min, max) per activation tensor by KL-divergence calibration over 2,048 bins, kept inside the values seen.

    ONNX Runtime's entropy thresholds are symmetric, (-t, t); clipping them to the observed range keeps
    a ReLU output's range at (0, t), so uint8 activations do not spend half their levels below zero.
    """
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        Path(model), None, augmented_model_path=str(workdir / "entropy-augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(TensorCalibrationReader(calibration))
    ranges: dict[str, tuple[float, float]] = {}
    for name, data in calibrator.compute_data().items():
        low, high = (float(v) for v in data.range_value)
        filled = np.flatnonzero(np.asarray(data.hist))
        if len(filled):  # the histogram's occupied edges are the values seen
            edges = np.asarray(data.bins)
            low, high = max(low, float(edges[filled[0]])), min(high, float(edges[filled[-1] + 1]))
        ranges[name] = (min(low, 0.0), max(high, 0.0))  # zero stays representable, as ORT requires
    return ranges


def layer_input_names(path: str | Path, weights: list[np.ndarray]) -> list[str | None]:
    """For each weight array, the input tensor of the Conv/ConvTranspose/Gemm/MatMul node holding that weight (None if none does).

    Matching by weight value rather than by node name or order survives any exporter's naming
    and any topological order, e.g. a downsample branch placed before the block it belongs to.
    """
    model = onnx.load(str(path))
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    found: list[str | None] = []
    for weight in weights:
        name = None
        for node in model.graph.node:
            if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
                continue
            stored = arrays.get(node.input[1])
            if stored is None:
                continue
            for candidate in (stored, stored.T):  # MatMul stores a Linear weight transposed
                if candidate.shape == weight.shape and np.allclose(candidate, weight, rtol=1e-5, atol=1e-7):
                    name = node.input[0]
            if name:
                break
        found.append(name)
    return found


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.levelname.lower()} from {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _quiet(notes: list[str] | None = None) -> Iterator[None]:
    """Silence the calibrator's progress prints and the quantizer's logging, so scripted runs stay quiet; errors still raise.

    The quantizer's warnings (ONNX Runtime logs through the root logger, whose first ``logging.warning``
    installs a stderr handler) go into ``notes`` for the step's record instead of onto the terminal as
    ``WARNING:root:Axis 1 is out-of-range for weight 'val_9'``, which no user can act on.
    """
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    root.handlers = [_Collect(notes if notes is not None else [])]
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.handlers = handlers
        root.setLevel(level)
