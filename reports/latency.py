"""Latency and throughput of one variant: warm-up, then many individually timed calls; medians and p90.

Each call is timed on its own with ``time.perf_counter_ns`` (after ``torch.cuda.synchronize`` on the
GPU) rather than with ``torch.utils.benchmark``'s blocked timing, because the p90 needs the
distribution of single calls, not block means. Repetitions continue until both a minimum count and a
minimum time are reached, so a fast model gets many more samples than a slow one.

The main CPU figures of a set of variants are taken in interleaved rounds (every variant once per
round, ``rounds`` times, the order rotated each round) and each figure is computed from the calls of
all rounds together. On a shared or virtual machine, throughput drifts by tens of percent over
seconds; timed one after another, whichever variant ran in a slow spell looked slow, and ratios
between variants moved with it. Compiled and GPU figures are still taken in one pass.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from zoo.environment import cpu_features, cpu_model, cuda_device_name, library_versions
from reports.errors import ReportError
from zoo.errors import first_line

# A pause before each variant's turn in a round. ONNX Runtime's worker threads spin for a while after a
# call returns (and OpenMP's do after PyTorch's): on 2 cores, PyTorch eager run straight after an ONNX
# Runtime turn did ~10% fewer calls in the next 0.4 s (622 against 687 images/s at batch 8); from a
# 50 ms pause on, the difference was gone. The medians reported here are moved less by a few slow
# calls, but those calls fell on eager only.
SETTLE_SECONDS = 0.2
TIMER = f"time.perf_counter_ns around each single call, after warm-up; each variant's turn in a round starts after a {SETTLE_SECONDS} s pause"


MAX_BATCH = 65_536


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU-seconds of the whole machine, CPU-seconds of this process and all its threads) so far; None off Linux."""
    try:
        fields = [int(v) for v in open("/proc/stat", encoding="ascii").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    times = os.times()
    # user, nice, system, idle, iowait, irq, softirq: steal (what a hypervisor took) is no other process's work
    return (sum(fields[:7]) - idle) / os.sysconf("SC_CLK_TCK"), times.user + times.system


def other_processes_cpus(start: tuple[float, float] | None, end: tuple[float, float] | None, seconds: float) -> float | None:
    """How many CPUs other processes kept busy on average between two ``_cpu_seconds`` readings ``seconds`` apart."""
    if start is None or end is None or seconds <= 0:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / seconds)


@dataclass(frozen=True)
class TimingConfig:
    """How latency is taken; every field is recorded next to the figures."""

    batch: int = 8  # the throughput batch
    threads: int = 2  # torch intra-op threads and ONNX Runtime intra-op threads
    warmup: int = 10  # untimed calls first: lazy initialisation, allocator and kernel caches settle
    min_repetitions: int = 30
    max_repetitions: int = 2000
    min_seconds: float = 0.5  # per measured shape: keep sampling until this much time has passed (over all rounds)
    compile: bool = True  # also time torch.compile (costs tens of seconds of compilation per variant)
    rounds: int = 3  # interleaved rounds of the main CPU figures only; repetitions and seconds are split between them

    def __post_init__(self) -> None:
        at_least = {"batch": 1, "threads": 1, "warmup": 0, "min_repetitions": 1, "max_repetitions": 1, "rounds": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ReportError(f"timing setting {name} must be a whole number of at least {low}, got {value!r}")
        if self.batch > MAX_BATCH:  # a timed batch of 10^8 digits asked the allocator for 313 GB
            raise ReportError(f"timing setting batch must be at most {MAX_BATCH:,}, got {self.batch:,}")
        if not self.min_seconds >= 0:
            raise ReportError(f"timing setting min_seconds must be 0 or more, got {self.min_seconds!r}")

    def per_round(self) -> TimingConfig:
        """The settings of one round: the repetitions and seconds split evenly between the rounds."""
        return dataclasses.replace(
            self, rounds=1, min_seconds=self.min_seconds / self.rounds,
            min_repetitions=max(1, math.ceil(self.min_repetitions / self.rounds)),
            max_repetitions=max(1, math.ceil(self.max_repetitions / self.rounds)),
        )

    def how(self) -> dict[str, Any]:
        """The settings as they go into results.json."""
        return dataclasses.asdict(self)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Fix torch's intra-op thread count for the duration, then restore it."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sample_calls(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, cfg: TimingConfig, sync: Callable[[], None]) -> list[int]:
    for _ in range(cfg.warmup):
        fn(x)
    sync()
    samples: list[int] = []
    start = time.perf_counter()
    while len(samples) < cfg.max_repetitions and (len(samples) < cfg.min_repetitions or time.perf_counter() - start < cfg.min_seconds):
        t0 = time.perf_counter_ns()
        fn(x)
        sync()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def _summary(samples: list[int]) -> dict[str, float]:
    ms = np.asarray(samples, dtype=np.float64) / 1e6
    q25, q50, q75, q90 = np.percentile(ms, [25, 50, 75, 90])
    return {"p50_ms": float(q50), "p90_ms": float(q90), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "iqr_ms": float(q75 - q25), "repetitions": len(samples)}


def time_calls(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, cfg: TimingConfig, sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Warm up, then time single calls of ``fn(x)``: median, p90, mean, min, IQR in ms and the count."""
    return _summary(_sample_calls(fn, x, cfg, sync))


def _figures(one: dict[str, float], many: dict[str, float], batch: int) -> dict[str, Any]:
    return {
        "batch1_p50_ms": one["p50_ms"],
        "batch1_p90_ms": one["p90_ms"],
        "batch1_mean_ms": one["mean_ms"],
        "batch1_min_ms": one["min_ms"],
        "batch1_iqr_ms": one["iqr_ms"],
        "batch1_repetitions": one["repetitions"],
        "throughput_batch": batch,
        "throughput_p50_ms": many["p50_ms"],
        "throughput_p90_ms": many["p90_ms"],
        "throughput_per_s": batch / (many["p50_ms"] / 1000.0),
        "throughput_repetitions": many["repetitions"],
    }


def figures(fn: Callable[[torch.Tensor], Any], x1: torch.Tensor, xb: torch.Tensor, cfg: TimingConfig, sync: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Batch-1 latency and throughput at ``len(xb)`` for one way of running a variant."""
    return _figures(time_calls(fn, x1, cfg, sync), time_calls(fn, xb, cfg, sync), len(xb))


def _guarded(label: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    # A way of running that fails (torch.compile without a compiler, an op with no GPU kernel) is
    # recorded with its reason, never dropped: the report shows why a cell is empty.
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party runtime is a recorded result
        return {"unavailable": f"{label} failed: {first_line(exc)}"}


def _compiled_figures(module: torch.nn.Module, x1: torch.Tensor, xb: torch.Tensor, cfg: TimingConfig, sync: Callable[[], None] = lambda: None) -> dict[str, Any]:
    compiled = torch.compile(module, dynamic=False)  # one static graph per shape, as a deployment would use

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return compiled(x)

    try:
        return figures(call, x1, xb, cfg, sync)
    finally:
        torch._dynamo.reset()  # free the compiled graphs before the next variant


def _with_how(primary: str, modes: dict[str, dict[str, Any]], how: dict[str, Any]) -> dict[str, Any]:
    head = modes[primary]
    top = {k: v for k, v in head.items()} if "unavailable" not in head else {"unavailable": head["unavailable"]}
    return {**top, "runtime": primary, "modes": modes, **how}


def _main_cpu_call(variant: Any, threads: int) -> tuple[str, Callable[[torch.Tensor], Any]]:
    if variant.format == "onnx":
        # A fresh session with the fixed thread count, so every ONNX variant runs with the same threads.
        return "ONNX Runtime", dataclasses.replace(variant, threads=threads, _session=None)
    return ("torch.compile (compiled when made or loaded)" if _compiled_at_load(variant) else "PyTorch eager"), variant


def _compiled_at_load(variant: Any) -> bool:
    """Whether the variant's module is already a torch.compile'd program (PT2E int8), so it has no eager form to time."""
    return bool(getattr(variant, "compiled", False))


def interleaved_cpu(variants: list[Any], x1: torch.Tensor, xb: torch.Tensor, cfg: TimingConfig,
                    progress: Callable[[str], None] = lambda message: None) -> list[dict[str, Any]]:
    """The main CPU figures (eager, or ONNX Runtime) of each variant, taken in ``cfg.rounds`` interleaved rounds."""
    calls = [_main_cpu_call(v, cfg.threads) for v in variants]
    one_round = cfg.per_round()
    n = len(variants)
    ones: list[list[int]] = [[] for _ in range(n)]
    manys: list[list[int]] = [[] for _ in range(n)]
    by_round: list[list[float]] = [[] for _ in range(n)]
    failures: list[list[tuple[int, str]]] = [[] for _ in range(n)]
    loads: list[float] = []
    # The load average also counts this process's own work just before (a compress run's training lifted it to
    # 2.6 on 2 CPUs with nothing else running), so what other processes did during the rounds is measured too.
    began, before = time.perf_counter(), _cpu_seconds()
    with torch_threads(cfg.threads):
        for r in range(cfg.rounds):
            progress(f"latency round {r + 1}/{cfg.rounds} over {n} variant(s)")
            if hasattr(os, "getloadavg"):
                loads.append(os.getloadavg()[0])
            order = [*range(r % n, n), *range(r % n)] if n else []  # rotated, so no variant always runs first
            for i in order:
                label, call = calls[i]
                time.sleep(SETTLE_SECONDS)
                try:
                    one = _sample_calls(call, x1, one_round, lambda: None)
                    many = _sample_calls(call, xb, one_round, lambda: None)
                except Exception as exc:  # noqa: BLE001 - a failing runtime is a recorded result, as in _guarded
                    failures[i].append((r + 1, f"{label} failed: {first_line(exc)}"))
                    continue
                ones[i] += one
                manys[i] += many
                by_round[i].append(len(xb) / (float(np.median(many)) / 1e9))
    others = other_processes_cpus(before, _cpu_seconds(), time.perf_counter() - began)
    results = []
    for i in range(n):
        if not manys[i]:
            results.append({"unavailable": failures[i][0][1] if failures[i] else "not measured"})
            continue
        merged = _figures(_summary(ones[i]), _summary(manys[i]), len(xb))
        merged.update(rounds=len(by_round[i]), throughput_per_s_by_round=by_round[i])
        if failures[i]:
            merged["failed_rounds"] = [f"round {r} of {cfg.rounds}: {reason}" for r, reason in failures[i]]
        if loads:
            merged["load_average_1min"] = round(max(loads), 2)  # the busiest moment of the rounds
        if others is not None:
            merged["other_processes_cpus"] = round(others, 2)  # the mean over all rounds
        results.append(merged)
    return results


def cpu_latency(variant: Any, x1: torch.Tensor, xb: torch.Tensor, cfg: TimingConfig, main: dict[str, Any] | None = None) -> dict[str, Any]:
    """``latency.cpu`` for a variant: eager (or ONNX Runtime) figures at top level, every mode under ``modes``.

    ``main`` holds the eager / ONNX Runtime figures when they were already taken in rounds interleaved
    with other variants (``interleaved_cpu``); otherwise they are taken here, in rounds of this variant alone.
    """
    how = {
        "device": cpu_model(),
        "cpu_features": cpu_features(),
        "threads": cfg.threads,
        "timing": cfg.how(),
        "timer": TIMER,
        "versions": library_versions(),
        "inputs": "the same inputs for every variant (batch 1 = the first of them; results.json's timing_inputs says what they are)",
        # other work on the machine makes timings noisy; the load says how busy it was
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
    }
    if main is None:
        main = interleaved_cpu([variant], x1, xb, cfg)[0]
    for key in ("load_average_1min", "other_processes_cpus"):
        if key in main:
            how[key] = main[key]
    if variant.format == "onnx":
        return _with_how("onnxruntime", {"onnxruntime": main}, how)
    if _compiled_at_load(variant):  # its main figures are already compiled ones; compiling the program again measures nothing new
        return _with_how("compiled", {"compiled": main, "eager": {"unavailable": "a program compiled with Inductor when it was made "
                                                                                   "or loaded; it has no eager form to time"}}, how)
    with torch_threads(cfg.threads):
        modes = {"eager": main}
        if cfg.compile:
            modes["compiled"] = _guarded("torch.compile", lambda: _compiled_figures(variant.module, x1, xb, cfg))
        else:
            modes["compiled"] = {"unavailable": "not measured (compile switched off for this run)"}
        return _with_how("eager", modes, how)


def _cuda_mode(module: torch.nn.Module, x1: torch.Tensor, xb: torch.Tensor, cfg: TimingConfig, dtype: torch.dtype, compiled: bool) -> dict[str, Any]:
    module = copy.deepcopy(module).to(device="cuda", dtype=dtype).eval()
    x1, xb = x1.to("cuda", dtype), xb.to("cuda", dtype)
    torch.cuda.reset_peak_memory_stats()
    if compiled:
        result = _compiled_figures(module, x1, xb, cfg, torch.cuda.synchronize)
    else:
        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x)

        result = figures(call, x1, xb, cfg, torch.cuda.synchronize)
    result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["peak_memory_method"] = "torch.cuda.max_memory_allocated (weights, inputs and activations held by PyTorch's allocator)"
    module = None  # drop the GPU copy before the cache is emptied
    torch.cuda.empty_cache()
    return result


def _onnx_cuda(variant: Any, x1: torch.Tensor, xb: torch.Tensor, cfg: TimingConfig) -> dict[str, Any]:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"unavailable": f"cannot run on the GPU: this ONNX Runtime build has no CUDA execution provider (it has {', '.join(providers)}); the ONNX variant runs on the CPU only"}
    session = ort.InferenceSession(str(variant.artifact), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in session.get_providers():
        # ONNX Runtime falls back to the CPU when the CUDA provider cannot load (missing cuDNN, driver): CPU time is not GPU time
        return {"unavailable": f"cannot run on the GPU: ONNX Runtime's CUDA provider did not load here (the session got {', '.join(session.get_providers())})"}
    name = session.get_inputs()[0].name

    def call(x: torch.Tensor) -> Any:
        return session.run(None, {name: x.numpy()})

    result = figures(call, x1, xb, cfg)
    result["note"] = "ONNX Runtime CUDA provider, inputs copied from host memory and outputs back to it in every call"
    return result


def cuda_latency(variant: Any, x1: torch.Tensor, xb: torch.Tensor, cfg: TimingConfig) -> dict[str, Any]:
    """``latency.cuda``: fp32 at top level; fp16, bf16 and compiled under ``modes``; or the reason it cannot run."""
    if not torch.cuda.is_available():
        return {"unavailable": "no CUDA GPU present on this machine"}
    how = {
        "device": cuda_device_name(),
        "timing": cfg.how(),
        "timer": TIMER + ", torch.cuda.synchronize() before reading the clock",
        "versions": {**library_versions(), "cuda": torch.version.cuda},
        "inputs": "the same inputs as on the CPU, already in GPU memory (host-to-device copies not timed)",
    }
    if variant.format == "onnx":
        how["inputs"] = ("the same inputs as on the CPU, copied from host memory, and the outputs back to it, inside every timed call "
                         "(unlike the PyTorch figures, which time neither copy)")
        return _with_how("onnxruntime", {"onnxruntime": _guarded("ONNX Runtime CUDA", lambda: _onnx_cuda(variant, x1, xb, cfg))}, how)
    modes = {"fp32": _guarded("fp32 on the GPU", lambda: _cuda_mode(variant.module, x1, xb, cfg, torch.float32, False))}
    if "unavailable" in modes["fp32"]:
        # e.g. dynamic int8 modules have CPU kernels only: say so once instead of three failures
        modes["fp32"]["unavailable"] = "cannot run on the GPU: " + modes["fp32"]["unavailable"]
        return _with_how("fp32", modes, how)
    native = next((p.dtype for p in variant.module.parameters() if p.is_floating_point()), torch.float32)
    if native != torch.float32:  # a half-precision variant's "fp32" figure is not its own precision
        modes["fp32"]["note"] = f"weights cast up from {str(native).removeprefix('torch.')} to fp32; the variant's own precision is the {'fp16' if native == torch.float16 else 'bf16'} mode"
    modes["fp16"] = _guarded("fp16 on the GPU", lambda: _cuda_mode(variant.module, x1, xb, cfg, torch.float16, False))
    modes["bf16"] = _guarded("bf16 on the GPU", lambda: _cuda_mode(variant.module, x1, xb, cfg, torch.bfloat16, False))
    if cfg.compile:
        modes["compiled"] = _guarded("torch.compile on the GPU", lambda: _cuda_mode(variant.module, x1, xb, cfg, torch.float32, True))
    else:
        modes["compiled"] = {"unavailable": "not measured (compile switched off for this run)"}
    return _with_how("fp32", modes, how)
