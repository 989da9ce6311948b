"""Quantization figures side by side: size ratio, metric drop and ORT latency of every int8/half variant.

Run: ``python benchmarks/bench_quantize.py [--models seed-lstm seed-cnn resnet-mnist] [--threads 2]``.
Sizes are bytes on disk of the saved artifact against the float safetensors; drops are in points of
accuracy on the 1,000-image test split; latency comes from ``reports.latencies`` after every variant
of a model is made: warm-up, then single calls on the same test images in ``--rounds`` rounds that
interleave the variants, on ``--threads`` threads; ms/b8 is the batch of 8 (from its median
throughput), ms/b1 the median single-image call. On a shared machine latencies are noisy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import reports
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
from reports.inputs import timing_inputs
from zoo.environment import cpu_description


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
    made: list[tuple[dict, object]] = []  # each measured row with its variant, timed together at the end

    def row(label: str, variant, seconds: float) -> None:
        size = saved_bytes(variant, work / label)
        metrics = data.evaluate(variant, reference=model)
        rows.append({"model": name, "variant": label, "bytes": size, "ratio": float_bytes / size,
                     "drop": _drop(data, base, metrics), "seconds": seconds})
        made.append((rows[-1], variant))

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
    # every variant timed together, after all are made, in rounds that interleave them (reports.latencies, as a
    # run's report does): timing each right after making and scoring it let the machine's spells and ONNX
    # Runtime's thread pools fall on one variant only
    x = timing_inputs(name, 8)
    cfg = reports.TimingConfig(batch=8, threads=args.threads, compile=False, rounds=args.rounds, min_seconds=args.seconds,
                               min_repetitions=30 * args.rounds, max_repetitions=100_000)
    timed = reports.latencies([variant for _, variant in made], x[:1].clone(), x, ["cpu"], cfg, memory=False)
    for (r, _), t in zip(made, timed):
        cpu = t["cpu"]
        r["runtime"] = cpu.get("runtime", "?")
        r["ms_b8"] = 1e3 * 8 / cpu["throughput_per_s"] if "throughput_per_s" in cpu else None
        r["ms_b1"] = cpu.get("batch1_p50_ms")
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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing seconds per variant and batch shape, over all rounds")
    parser.add_argument("--qat-epochs", type=float, default=1.0)
    parser.add_argument("--skip-qat", action="store_true")
    parser.add_argument("--skip-pt2e", action="store_true")
    args = parser.parse_args()
    print(f"{cpu_description()}; torch {torch.__version__}, {args.threads} threads; medians over {args.rounds} interleaved "
          f"rounds, {args.seconds:g} s per variant and shape; load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<20}{'variant':<40}{'bytes':>10}{'x smaller':>10}{'drop':>16}{'ms/b8':>9}{'ms/b1':>8}{'make s':>8}  runtime")
    for name in args.models:
        for r in bench_model(name, args):
            if "error" in r:
                print(f"{r['model']:<20}{r['variant']:<40}  failed: {r['error']}")
            else:
                ms = "".join(f"{r[k]:>{w}.2f}" if r[k] is not None else f"{'-':>{w}}" for k, w in (("ms_b8", 9), ("ms_b1", 8)))
                print(f"{r['model']:<20}{r['variant']:<40}{r['bytes']:>10,}{r['ratio']:>10.2f}   {r['drop']:>13}"
                      f"{ms}{r['seconds']:>8.1f}  {r['runtime']}", flush=True)


if __name__ == "__main__":
    main()
