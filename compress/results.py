"""results.json: the versioned record of a compression run, and the figures it holds per variant.

``schema`` is "slimlens.results/1". Sizes are bytes on disk of each variant's deployable artifact
(and gzip -9 of it); ``params``, ``nonzero_params`` and ``macs`` count the float computation a variant
performs (a quantized variant keeps its float model's counts: quantization changes bits, not counts).
Latency is not measured here: ``reports`` adds ``latency.<device>`` to each variant before writing.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.cards import write_atomic
from zoo.errors import SlimlensError
from zoo.metrics import predicted_labels

SCHEMA = "slimlens.results/1"
VARIANT_KEYS = ("name", "format", "steps", "artifact", "size_bytes", "gzip_bytes", "params", "nonzero_params", "macs",
                "metrics", "parity", "seconds")
TOP_KEYS = ("schema", "model", "recipe", "command", "environment", "variants")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(seed: int) -> dict[str, Any]:
    """Library versions, CPU, thread count, seed and date: what a reader needs to reproduce the run."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "captum": _version("captum"),
        "torch_pruning": _version("torch-pruning"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seed": seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _state_tensors(module: nn.Module):
    # Quantized modules keep weights in packed tuples; BatchNorm statistics are state, not parameters.
    for key, value in module.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked", ".scale", ".zero_point")):
            continue
        for tensor in value if isinstance(value, tuple) else (value,):
            if isinstance(tensor, torch.Tensor):
                yield tensor.dequantize() if tensor.is_quantized else tensor


def count_params(module: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of ``module``."""
    total = nonzero = 0
    for tensor in _state_tensors(module):
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return total, nonzero


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on one input, counted by hooks on conv, linear and LSTM layers."""
    macs = 0

    def conv(m: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out[0].numel() * (m.in_channels // m.groups) * m.weight[0, 0].numel()

    def deconv(m: nn.ConvTranspose2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += args[0][0].numel() * (m.out_channels // m.groups) * m.weight[0, 0].numel()

    def linear(m: nn.Linear, args: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out[0].numel() * m.in_features

    def rnn(m: nn.LSTM | nn.GRU, args: tuple, out: tuple) -> None:
        nonlocal macs
        steps = args[0].shape[1 if m.batch_first else 0] if args[0].dim() == 3 else args[0].shape[0]
        gates = 4 if isinstance(m, nn.LSTM) else 3
        dirs = 2 if m.bidirectional else 1
        for layer in range(m.num_layers):
            inputs = m.input_size if layer == 0 else m.hidden_size * dirs
            macs += steps * dirs * gates * m.hidden_size * (inputs + m.hidden_size)

    kinds = ((nn.Conv1d | nn.Conv2d | nn.Conv3d, conv), (nn.ConvTranspose2d, deconv), (nn.Linear, linear), (nn.LSTM | nn.GRU, rnn))
    handles = [sub.register_forward_hook(hook) for sub in module.modules() for kind, hook in kinds if isinstance(sub, kind)]
    try:
        with torch.inference_mode():
            module(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return macs


def is_float_module(module: nn.Module) -> bool:
    """Whether every weight of ``module`` is a plain float32 tensor (not quantized, not half precision)."""
    for value in module.state_dict().values():
        if not isinstance(value, torch.Tensor) or value.is_quantized or (value.is_floating_point() and value.dtype != torch.float32):
            return False
    return True


def file_sizes(path: Path) -> tuple[int, int]:
    """(bytes on disk, bytes after gzip -9) of an artifact."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))


def output_parity(reference: torch.Tensor, outputs: torch.Tensor, classifier: bool) -> dict[str, Any]:
    """Max absolute output difference and (for classifiers) the fraction of identical predictions."""
    outputs = outputs.reshape(reference.shape)
    parity: dict[str, Any] = {"max_abs_diff": float((outputs - reference).abs().max()), "samples": len(reference)}
    if classifier:
        parity["argmax_agreement"] = float((predicted_labels(outputs) == predicted_labels(reference)).float().mean())
    return parity


def validate(results: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or malformed key of a results dict."""
    for key in TOP_KEYS:
        if key not in results:
            raise ValueError(f"results lack {key!r}")
    if results["schema"] != SCHEMA:
        raise ValueError(f"results schema is {results['schema']!r}, expected {SCHEMA!r}")
    variants = results["variants"]
    if not variants or variants[0].get("name") != "original":
        raise ValueError("the first variant must be named 'original'")
    for variant in variants:
        missing = [k for k in VARIANT_KEYS if k not in variant]
        if missing:
            raise ValueError(f"variant {variant.get('name')!r} lacks {', '.join(missing)}")


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """Validate ``results`` and write them as JSON atomically (temporary file, then rename)."""
    validate(results)
    path = Path(path)
    write_atomic(path, (json.dumps(results, indent=2, default=_json_default) + "\n").encode())
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json."""
    results = json.loads(Path(path).read_text())
    validate(results)
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def staging_dir(out: str | Path, force: bool = False) -> Path:
    """A fresh temporary folder beside ``out`` to build a run in; refuses an ``out`` that would be clobbered."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SlimlensError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SlimlensError(f"--out {out} exists and is not empty; pass --force to replace it or name a new folder")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise SlimlensError(f"cannot write {out}: its parent folder {parent} does not exist")
    try:
        return Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as exc:
        raise SlimlensError(f"cannot write {out}: {exc.strerror or exc} in {parent}") from None


def move_into_place(staged: Path, out: str | Path) -> Path:
    """Rename a finished ``staged`` folder to ``out``, replacing an old ``out`` only once the new one is complete."""
    out = Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staged, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
