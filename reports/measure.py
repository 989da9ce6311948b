"""``measure``: every figure of every variant (task metric, parity, size, MACs, latency, memory) into results.json form."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import zoo
from zoo.environment import environment
from reports.errors import DeviceError, ReportError
from reports.inputs import inputs_description, timing_inputs
from reports.latency import TimingConfig, cpu_latency, cuda_latency, interleaved_cpu
from reports.memory import peak_memory
from reports.results import SCHEMA
from compress.results import counted_module
from zoo.footprint import disk_bytes, module_macs, module_params, onnx_macs, onnx_params
from zoo.metrics import batched_outputs, decision_threshold, output_parity

DEVICES = ("cpu", "cuda")


def parse_devices(devices: str | Sequence[str]) -> list[str]:
    """Check a device list (``"cpu,cuda"`` or a sequence); CUDA without a GPU is an error, not a silent skip."""
    names = [d.strip().lower() for d in (devices.split(",") if isinstance(devices, str) else devices) if d.strip()]
    if not names:
        raise DeviceError("no device named; use --devices cpu, cuda or cpu,cuda")
    for name in names:
        if name not in DEVICES:
            raise DeviceError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if "cuda" in names and not torch.cuda.is_available():
        raise DeviceError("cuda was requested but no CUDA GPU is present on this machine (torch.cuda.is_available() is False); use --devices cpu")
    return list(dict.fromkeys(names))


def latency(variant: Any, x1: torch.Tensor, xb: torch.Tensor, devices: Sequence[str], cfg: TimingConfig, memory: bool = True,
            cpu_main: dict[str, Any] | None = None) -> dict[str, Any]:
    """``latency`` of results.json: one entry per device, requested or not, so absence is always explained.

    ``cpu_main``: the eager / ONNX Runtime CPU figures when ``latencies`` already took them in rounds
    interleaved with other variants; without it they are taken here.
    """
    out: dict[str, Any] = {}
    if "cpu" in devices:
        out["cpu"] = cpu_latency(variant, x1, xb, cfg, cpu_main)
        out["cpu"]["peak_memory"] = peak_memory(variant, xb, cfg.threads) if memory else {"unavailable": "not measured (memory probe switched off)"}
    else:
        out["cpu"] = {"unavailable": "not requested"}
    if "cuda" in devices:
        out["cuda"] = cuda_latency(variant, x1, xb, cfg)
    elif torch.cuda.is_available():
        out["cuda"] = {"unavailable": "not requested"}
    else:
        out["cuda"] = {"unavailable": "no CUDA GPU present on this machine"}
    return out


def latencies(variants: Sequence[Any], x1: torch.Tensor, xb: torch.Tensor, devices: Sequence[str], cfg: TimingConfig,
              memory: bool = True, progress: Callable[[str], None] = lambda message: None) -> list[dict[str, Any]]:
    """``latency`` of every variant, their main CPU figures taken in interleaved rounds so that ratios between them hold."""
    mains = interleaved_cpu(list(variants), x1, xb, cfg, progress) if "cpu" in devices else [None] * len(variants)
    return [latency(v, x1, xb, devices, cfg, memory, cpu_main=main) for v, main in zip(variants, mains)]


def size_figures(variant: Any, example: torch.Tensor) -> dict[str, Any]:
    """size_bytes, gzip_bytes, params, nonzero_params, macs of a variant (an unsaved module is saved to a temp folder to weigh it)."""
    figures: dict[str, Any] = {}
    artifact = Path(variant.artifact) if getattr(variant, "artifact", None) else None
    if artifact is not None and artifact.exists():
        figures.update(disk_bytes(artifact))
    elif variant.format == "torch":
        with tempfile.TemporaryDirectory() as tmp:
            try:
                saved = type(variant)(name=variant.name, module=variant.module)
                saved.save(tmp)
                figures.update(disk_bytes(saved.artifact))
                figures["size_note"] = "unsaved variant: weights written as safetensors to a temporary folder to weigh them"
            except Exception:  # noqa: BLE001 - packed quantized weights are not plain tensors; pickle them instead
                path = Path(tmp) / "state.pt"
                torch.save(variant.module.state_dict(), path)
                figures.update(disk_bytes(path))
                figures["size_note"] = "unsaved variant: state dict written with torch.save to a temporary folder to weigh it"
    if variant.format == "onnx":
        figures.update(onnx_params(artifact))
        figures["macs"] = onnx_macs(artifact, example)
    else:
        counted = counted_module(variant)
        figures.update(module_params(counted))
        floating = next((t.dtype for t in counted.parameters() if t.is_floating_point()), example.dtype)
        figures["macs"] = module_macs(counted, example.to(floating))
    figures["macs_note"] = "multiply-accumulates of one batch-1 forward pass"
    return figures


def _parity_inputs(model: str) -> tuple[torch.Tensor, bool]:
    spec = zoo.spec(model)
    if spec.task == "generation":
        from zoo.metrics import GAN_EVAL_SAMPLES, GAN_EVAL_SEED

        return zoo.latents(GAN_EVAL_SAMPLES, GAN_EVAL_SEED), False
    return zoo.dataset(spec.dataset, "test").images, spec.task in ("classification", "binary-classification", "discrimination")


def _relative(path: Path | None, run_dir: Path | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    if run_dir is not None:
        try:
            return os.path.relpath(path.resolve(), Path(run_dir).resolve()) if path.resolve().is_relative_to(Path(run_dir).resolve()) else str(path.resolve())
        except ValueError:
            pass
    return str(path)


def measure(
    variants: Sequence[Any],
    model: str | None,
    devices: str | Sequence[str] = ("cpu",),
    cfg: TimingConfig = TimingConfig(),
    *,
    input_shape: tuple[int, ...] | None = None,
    memory: bool = True,
    metrics: bool = True,
    run_dir: str | Path | None = None,
    seed: int | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``variants`` (the first is the original) of zoo ``model`` on ``devices``; returns results.json content."""
    devices = parse_devices(devices)
    say = progress or (lambda message: None)
    if model is not None and model not in zoo.list_models():
        # a user's own architecture: timed on seeded noise of its input shape; its task metric is compress's job
        if input_shape is None:
            raise ReportError(f"{model!r} is not a zoo model; give measure() its input_shape to time it")
        model = None
        metrics = False
    x_all = timing_inputs(model, cfg.batch, input_shape)
    x1, xb = x_all[:1].clone(), x_all
    spec = zoo.spec(model) if model else None
    parity_inputs, is_classifier = _parity_inputs(model) if model else (x_all, False)
    reference = batched_outputs(variants[0], parity_inputs) if variants else None
    entries = []
    for i, variant in enumerate(variants):
        say(f"[{i + 1}/{len(variants)}] {variant.name}: size and MACs")
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "name": variant.name,
            "format": variant.format,
            "steps": list(getattr(variant, "steps", []) or []),
            "artifact": _relative(getattr(variant, "artifact", None), run_dir),
        }
        entry.update(size_figures(variant, x1))
        if metrics and model:
            say(f"[{i + 1}/{len(variants)}] {variant.name}: task metric on the test split")
            ref_forward = variants[0] if spec.task == "generation" else None
            entry["metrics"] = zoo.evaluate(model, forward=variant, reference=ref_forward)
            entry["metrics_how"] = f"zoo.evaluate({model!r}, forward=variant) on the {spec.dataset} test split" + (
                "; fidelity against the first variant on the same latents" if ref_forward is not None else "")
            entry["parity"] = output_parity(reference, batched_outputs(variant, parity_inputs), is_classifier,
                                            decision_threshold(spec.task))
        entry["measure_seconds"] = round(time.perf_counter() - started, 2)
        entries.append(entry)
    started = time.perf_counter()
    say(f"latency of {len(variants)} variant(s) on {', '.join(devices)}")
    for entry, timed in zip(entries, latencies(variants, x1, xb, devices, cfg, memory, say)):
        entry["latency"] = timed
    latency_seconds = round(time.perf_counter() - started, 2)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "model": model,
        "environment": environment(cfg.threads, seed),
        "devices": devices,
        "timing": cfg.how(),
        "timing_inputs": inputs_description(model, input_shape),
        "latency_seconds": latency_seconds,  # all variants together: their rounds interleave (measure_seconds excludes it)
        "variants": entries,
    }
    if spec is not None:
        results.update(primary_metric=spec.primary_metric, higher_is_better=spec.higher_is_better, family=spec.family, task=spec.task,
                       class_names=list(spec.class_names))
    if command:
        results["command"] = command
    return results
