"""Peak memory of inference on the CPU, read from the kernel's resident-set high-water mark.

What is measured: a PyTorch variant runs once unmeasured (a torch.compile'd program compiles there,
not in the measured pass), free memory is handed back to the OS (``malloc_trim``), the high-water mark is
reset (``echo 5 > /proc/self/clear_refs``), one forward pass runs on the throughput batch, and
``VmHWM`` is read from ``/proc/self/status``. ``inference_mb`` is that peak minus the resident set just
before the call: how much the pass made the process grow. ``process_peak_mb`` is the whole process's peak.

It is not the pass's working memory. Memory the process already holds and reuses is not counted:
an ONNX variant gets a fresh session, opened before the baseline, and ONNX Runtime's arena keeps the
pages it used while loading the session, so a small model's activations fit there and the figure can
be near zero (lenet5's static int8 graph at batch 8: about 10 KiB, against some 200 KiB with the arena
switched off). The kernel counts whole pages, so growth under ``resolution_kb`` does not show.
A fresh child process per variant would not be fairer: its first pass also faults in library code
and starts thread pools (lenet5 eager: 10 to 14 MiB cold against about 1.4 MiB warm), and it costs
seconds per variant.
tracemalloc would miss all of it, since torch and ONNX Runtime allocate outside Python's heap.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

METHOD = ("/proc/self/status VmHWM after one forward pass at the throughput batch, minus VmRSS before it; high-water mark reset "
          "and malloc_trim just before it; a PyTorch variant runs once unmeasured first (a compiled one compiles then); memory the process already held and reused (e.g. ONNX Runtime's arena) is not counted")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc: return freed heap pages so reuse cannot hide a peak
    except (OSError, AttributeError):
        pass


def _forward_peak(variant: Any, batch: torch.Tensor, threads: int) -> dict[str, float]:
    if getattr(variant, "format", None) == "onnx":
        variant = copy.copy(variant)
        variant._session, variant.threads = None, threads
        variant.session  # open the session before the baseline: loading the file is not inference
    else:  # a torch.compile'd program (PT2E int8) compiles again after a dynamo reset: compiling is not inference either
        variant(batch)
    _trim()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    variant(batch)
    peak = _status_kb("VmHWM")
    # three decimals keep the kernel's kB: a report must tell "grew by 10 KiB" from "did not grow"
    return {"inference_mb": round(max(peak - before, 0) / 1024, 3), "process_peak_mb": round(peak / 1024, 1),
            "resolution_kb": os.sysconf("SC_PAGE_SIZE") // 1024}


def peak_memory(variant: Any, batch: torch.Tensor, threads: int) -> dict[str, Any]:
    """Peak resident memory of one forward pass of ``variant`` on ``batch`` in this process (see the module docstring)."""
    try:
        with_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            figures = _forward_peak(variant, batch, threads)
        finally:
            torch.set_num_threads(with_threads)
    except OSError as exc:  # no /proc (not Linux) or clear_refs not writable
        return {"unavailable": f"cannot read the resident-set high-water mark here: {exc}"}
    return {**figures, "batch": len(batch), "method": METHOD + " (this process)"}
