"""Where a run or a measurement was taken: library versions, CPU model, threads, GPU, seed, date."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that run and measure variants."""
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "numpy", "torchvision", "captum", "torch-pruning"):
        versions[name] = _version(name)
    return versions


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def cuda_device_name() -> str | None:
    """The name of CUDA device 0, or None when no CUDA GPU is present."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def environment(threads: int, seed: int | None = None) -> dict[str, Any]:
    """The environment block of results.json (the same for ``slimlens compress`` and ``slimlens bench``)."""
    return {
        "versions": library_versions(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "gpu": cuda_device_name() or "none (no CUDA GPU present)",
        "seed": seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
