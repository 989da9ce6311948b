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


# The instruction-set extensions that decide how fast int8 and fp32 kernels run, in the words vendors
# use. Two machines both named "AMD EPYC" ran the same int8 file at about 7,600 and 18,900 images/s: one had
# AVX2 only, the other AVX-512 with VNNI, so a figure without them cannot be compared.
_SIMD_FLAGS = (
    ("amx_int8", "AMX-INT8"), ("amx_bf16", "AMX-BF16"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512_bf16", "AVX-512 BF16"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"), ("fma", "FMA"),
    ("sve2", "SVE2"), ("sve", "SVE"), ("i8mm", "I8MM"), ("asimddp", "NEON dot product"), ("asimd", "NEON"),
)


def features_from_cpuinfo(text: str) -> str:
    """Family/model numbers and SIMD extensions from the text of /proc/cpuinfo (its first processor describes them all)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())  # x86 says flags, Arm says Features
    names = [name for flag, name in _SIMD_FLAGS if flag in flags]
    ident = " ".join(f"{k.removeprefix('cpu ')} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    return "; ".join(part for part in (ident, ", ".join(names)) if part)


@lru_cache(maxsize=1)
def cpu_features() -> str:
    """This CPU's family/model numbers and the SIMD extensions that set kernel speed ("" where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            return features_from_cpuinfo(f.read())
    except OSError:
        return ""


def cpu_description() -> str:
    """The CPU's name followed by its features in brackets, for one-line machine descriptions."""
    features = cpu_features()
    return f"{cpu_model()} ({features})" if features else cpu_model()


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


def environment(threads: int, seed: int | None = None, threads_for: str = "timing") -> dict[str, Any]:
    """The environment block of results.json (the same for ``slimlens compress`` and ``slimlens bench``).

    ``threads_for`` says what ``threads`` counted: compress trains and evaluates with PyTorch's
    threads and times with ``--threads``, and each latency record names its own.
    """
    return {
        "versions": library_versions(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "threads_for": threads_for,
        "gpu": cuda_device_name() or "none (no CUDA GPU present)",
        "seed": seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
