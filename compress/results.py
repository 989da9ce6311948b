"""results.json: the versioned record of a compression run, and the figures it holds per variant.

``schema`` is "slimlens.results/1". Sizes are bytes on disk of each variant's deployable artifact
(and gzip -9 of it); ``params``, ``nonzero_params`` and ``macs`` count the float computation a variant
performs: a quantized PyTorch variant keeps its float model's counts (quantization changes bits, not
counts), and an ONNX variant is counted from its file (BatchNorm folded into the convolutions, and in
int8 the weights that round to zero counted as zeros); both with the counters of ``zoo.footprint`` that
``reports`` also uses, so the two never disagree. Latency is not measured here:
``reports`` adds ``latency.<device>`` to each variant before writing. ``reports.read_results`` reads
the file back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.cards import check_replaceable, usual_mode, write_atomic
from zoo.errors import SlimlensError

SCHEMA = "slimlens.results/1"
VARIANT_KEYS = ("name", "format", "steps", "artifact", "size_bytes", "gzip_bytes", "params", "nonzero_params", "macs",
                "metrics", "parity", "seconds")
TOP_KEYS = ("schema", "model", "recipe", "command", "environment", "variants")


def is_float_module(module: nn.Module) -> bool:
    """Whether every weight of ``module`` is a plain float32 tensor (not quantized, not half precision)."""
    for value in module.state_dict().values():
        if not isinstance(value, torch.Tensor) or value.is_quantized or (value.is_floating_point() and value.dtype != torch.float32):
            return False
    return True


def counted_module(variant: Any, fallback: nn.Module | None = None) -> nn.Module:
    """The module whose params and MACs a variant has: compress and ``slimlens bench`` count by this one rule.

    A quantized or half-precision variant type carries the float model it was made from and is counted
    on it (a PT2E program's int8 weights are plain integer buffers no dtype test tells from a float
    model's own); any other float variant on its own module; the rest on ``fallback`` when it has no stand-in.
    """
    from compress.variant import TorchVariant

    stand_in = getattr(variant, "stand_in", None)
    quantized = isinstance(variant, TorchVariant) and type(variant) is not TorchVariant and stand_in is not None
    if not quantized and is_float_module(variant.module):
        return variant.module
    if stand_in is not None:
        return stand_in
    return fallback if fallback is not None else variant.module


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
    out = Path(out).resolve()  # "." or "dir/.." have no name of their own to stage beside
    if out == Path(out.anchor):
        raise SlimlensError(f"--out {out} is the file system root; name a folder")
    if out.exists() and not out.is_dir():
        raise SlimlensError(f"--out {out} is a file; name a folder")
    check_replaceable(out, "results.json")  # before the --force advice: --force never replaces a folder slimlens did not write
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SlimlensError(f"--out {out} exists and is not empty; pass --force to replace it or name a new folder")
    if out.is_dir():
        _check_movable(out)  # before the run, not after it: the finished run replaces this folder by renaming it aside
    # --out may name a new nested folder, as explain's and report's may. The run is staged in the nearest
    # folder that exists and the missing ones are made only when it is renamed into place, so a run that
    # fails or is refused leaves no empty folders behind.
    anchor = out.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise SlimlensError(f"cannot write {out}: {anchor} is a file; name a folder")
    try:
        staged = Path(tempfile.mkdtemp(dir=anchor, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as exc:
        raise SlimlensError(f"cannot write {out}: {exc.strerror or exc} in {anchor}; name a folder you can write") from None
    usual_mode(staged)
    return staged


def _check_movable(out: Path) -> None:
    """Refuse an existing ``out`` that cannot be renamed aside (a mount point, an immutable or read-only parent)."""
    probe = out.with_name(f".{out.name}.probe-{os.getpid()}")
    try:
        os.rename(out, probe)
    except OSError as exc:
        raise SlimlensError(f"--out {out} cannot be replaced ({exc.strerror or exc}): a finished run takes its place by renaming it; "
                            "name a new folder inside it or elsewhere") from None
    os.rename(probe, out)


def move_into_place(staged: Path, out: str | Path) -> Path:
    """Rename a finished ``staged`` folder to ``out``, replacing an old ``out`` only once the new one is complete."""
    out = Path(out).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # staging_dir left a new --out's missing parents to now
    except OSError as exc:
        raise SlimlensError(f"cannot write {out}: {exc.strerror or exc} making {out.parent}; name a folder you can write") from None
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        try:
            os.replace(out, old)
        except OSError as exc:  # changed since staging_dir checked it
            raise SlimlensError(f"--out {out} cannot be replaced ({exc.strerror or exc}); name a new folder") from None
    try:
        os.replace(staged, out)
    except BaseException:  # an interrupt or failure here must not leave the old run hidden
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
