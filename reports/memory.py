"""Peak memory of inference on the CPU, read from the kernel's resident-set high-water mark.

What is measured: free memory is handed back to the OS (``malloc_trim``), the high-water mark is
reset (``echo 5 > /proc/self/clear_refs``), one forward pass runs on the throughput batch, and
``VmHWM`` is read from ``/proc/self/status``. ``inference_mb`` is that peak minus the resident set just
before the call: how much the pass made the process grow. ``process_peak_mb`` is the whole process's peak.

It is not the pass's working memory. Memory the process already holds and reuses is not counted:
an ONNX variant gets a fresh session, opened before the baseline, and ONNX Runtime's arena keeps the
pages it used while loading the session, so a small model's activations fit there and the figure can
be near zero (lenet5's static int8 graph at batch 8: about 10 KiB, against some 200 KiB with the arena
switched off). The kernel counts whole pages, so growth under ``resolution_kb`` does not show.
``isolated=True`` does the same in a fresh child process (slower: the child imports torch); there the
first pass also faults in library code and starts thread pools, which this figure then includes.
tracemalloc would miss all of it, since torch and ONNX Runtime allocate outside Python's heap.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent  # the folder holding the reports, compress and zoo packages
METHOD = ("/proc/self/status VmHWM after one forward pass at the throughput batch, minus VmRSS before it; high-water mark reset "
          "and malloc_trim just before it; memory the process already held and reused (e.g. ONNX Runtime's arena) is not counted")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _payload(variant: Any, batch: torch.Tensor, threads: int) -> bytes:
    light = copy.copy(variant)
    if hasattr(light, "_session"):
        light._session = None  # sessions do not pickle; the child opens its own
    light.stand_in = None
    buffer = io.BytesIO()
    torch.save({"variant": light, "batch": batch, "threads": threads}, buffer)
    return buffer.getvalue()


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
    _trim()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    variant(batch)
    peak = _status_kb("VmHWM")
    # three decimals keep the kernel's kB: a report must tell "grew by 10 KiB" from "did not grow"
    return {"inference_mb": round(max(peak - before, 0) / 1024, 3), "process_peak_mb": round(peak / 1024, 1),
            "resolution_kb": os.sysconf("SC_PAGE_SIZE") // 1024}


def peak_memory(variant: Any, batch: torch.Tensor, threads: int, isolated: bool = False, timeout: float = 120.0) -> dict[str, Any]:
    """Peak resident memory of one forward pass of ``variant`` on ``batch`` (see the module docstring)."""
    if not isolated:
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
    try:
        payload = _payload(variant, batch, threads)
    except Exception as exc:  # noqa: BLE001 - a module that cannot be pickled is reported, not fatal
        return {"unavailable": f"cannot hand the variant to a child process: {type(exc).__name__}: {str(exc)[:200]}"}
    try:
        # Run this file as a script, not ``-m reports.memory``: importing the reports package would load
        # matplotlib and jinja2 into the child, and that is not the variant's memory.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        done = subprocess.run([sys.executable, __file__], input=payload, capture_output=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"unavailable": f"memory probe took longer than {timeout:.0f} s"}
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        return {"unavailable": f"memory probe failed: {tail[-1] if tail else 'exit ' + str(done.returncode)}"[:300]}
    return {**json.loads(done.stdout.decode().strip().splitlines()[-1]), "batch": len(batch), "method": METHOD + " (fresh child process)"}


def _child() -> None:
    data = torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False)
    torch.set_num_threads(data["threads"])
    print(json.dumps(_forward_peak(data["variant"], data["batch"], data["threads"])))


if __name__ == "__main__":
    _child()
