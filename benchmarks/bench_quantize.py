"""Quantization figures side by side: size ratio, metric drop and ORT latency of every int8/half variant.

Run: ``python benchmarks/bench_quantize.py [--models seed-lstm seed-cnn resnet-mnist] [--threads 2]``.
Sizes are bytes on disk of the saved artifact against the float safetensors; drops are in points of
accuracy on the 1,000-image test split; latency is the median of ``--reps`` timed calls at batch 8
after warm-up, on ``--threads`` threads. On a shared machine latencies are noisy: compare within a run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import zoo
from compress.context import CompressionData, data_for
from compress.export import ExportOnnxConfig, export_onnx_step
from compress.quantize import (
    DynamicInt8Config,
    HalfPrecisionConfig,
    OrtDynamicInt8Config,
    Pt2eInt8Config,
    QatConfig,
    StaticInt8Config,
    half_precision,
    quantization_aware_training,
    quantize_dynamic,
    quantize_dynamic_onnx,
    quantize_pt2e,
    quantize_static_onnx,
)
from compress.variant import TorchVariant
from zoo.environment import cpu_description


def median_ms(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, reps: int, warmup: int = 10) -> float:
    """Median wall time of ``forward(batch)`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        forward(batch)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def saved_bytes(variant, folder: Path) -> int:
    """Bytes on disk of the variant's saved artifact."""
    variant.save(folder)
    return Path(variant.artifact).stat().st_size


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    """Every applicable quantization of zoo model ``name``, measured the same way."""
    model, data = zoo.load(name), data_for(name)
    base = data.evaluate(model)
    batch = data.example_input(8)
    work = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    rows: list[dict] = []

    def row(label: str, variant, seconds: float, threads_apply: bool = True) -> None:
        if hasattr(variant, "threads") and threads_apply:
            variant.threads = args.threads
        size = saved_bytes(variant, work / label)
        metrics = data.evaluate(variant, reference=model)
        rows.append({"model": name, "variant": label, "bytes": size, "ratio": float_bytes / size,
                     "drop": _drop(data, base, metrics), "ms_b8": median_ms(variant, batch, args.reps),
                     "seconds": seconds})

    float_bytes = saved_bytes(TorchVariant("fp32", source=data.source, module=model), work / "fp32")
    steps: list[tuple[str, Callable[[], object]]] = [
        ("torch fp32", lambda: TorchVariant("fp32", source=data.source, module=model)),
        ("onnx fp32", lambda: export_onnx_step(model, ExportOnnxConfig(), data)),
        ("float16", lambda: half_precision(model, HalfPrecisionConfig("float16"), data)),
        ("bfloat16", lambda: half_precision(model, HalfPrecisionConfig("bfloat16"), data)),
    ]
    if data.family in ("lstm", "mlp", "autoencoder") or any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        steps.append(("torch dynamic int8", lambda: quantize_dynamic(model, DynamicInt8Config(), data)))
        steps.append(("ort dynamic int8", lambda: quantize_dynamic_onnx(model, OrtDynamicInt8Config(), data)))
    if data.family != "lstm":
        for method in ("minmax", "entropy", "percentile"):
            steps.append((f"ort static u8/s8 {method}", _static(model, data, calibration=method)))
        # the default picks 7-bit weights on x86 without VNNI; this row shows what full 8-bit weights do here
        steps.append(("ort static u8/s8 minmax 8-bit weights", _static(model, data, reduce_range=False)))
        steps.append(("ort static s8/s8 minmax", _static(model, data, activations="int8")))
        if not args.skip_qat:
            steps.append((f"qat {args.qat_epochs} ep u8/s8 minmax", lambda: quantization_aware_training(model, QatConfig(epochs=args.qat_epochs), data)))
        if not args.skip_pt2e:
            steps.append(("pt2e int8 compiled", lambda: quantize_pt2e(model, Pt2eInt8Config(), data)))
    torch.set_num_threads(args.threads)
    for label, make in steps:
        start = time.perf_counter()
        try:
            variant = make()
        except Exception as exc:  # a technique that fails here is a result to print, not a crash
            rows.append({"model": name, "variant": label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
            continue
        row(label, variant, time.perf_counter() - start)
    return rows


def _drop(data: CompressionData, base: dict, metrics: dict) -> str:
    """How much worse the primary metric got: accuracy in points, FD or MSE in their own units."""
    drop = data.metric_drop(base, metrics)
    return f"{100 * drop:+.2f} pt" if data.primary_metric == "accuracy" else f"{drop:+.3g} {data.primary_metric}"


def _static(model: torch.nn.Module, data: CompressionData, **settings) -> Callable[[], object]:
    return lambda: quantize_static_onnx(model, StaticInt8Config(**settings), data)


def main() -> None:
    """Parse arguments, measure every model, print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["seed-lstm", "seed-cnn", "resnet-mnist"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--qat-epochs", type=float, default=1.0)
    parser.add_argument("--skip-qat", action="store_true")
    parser.add_argument("--skip-pt2e", action="store_true")
    args = parser.parse_args()
    print(f"{cpu_description()}; torch {torch.__version__}, {args.threads} threads, batch 8, median of {args.reps} calls")
    print(f"{'model':<20}{'variant':<40}{'bytes':>10}{'x smaller':>10}{'drop':>16}{'ms/b8':>9}{'make s':>8}")
    for name in args.models:
        for r in bench_model(name, args):
            if "error" in r:
                print(f"{r['model']:<20}{r['variant']:<40}  failed: {r['error']}")
            else:
                print(f"{r['model']:<20}{r['variant']:<40}{r['bytes']:>10,}{r['ratio']:>10.2f}   {r['drop']:>13}"
                      f"{r['ms_b8']:>9.2f}{r['seconds']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
