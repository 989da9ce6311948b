"""``bench``: measure a zoo model (original + ONNX fp32 export) or a run folder's saved variants, without compressing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import zoo
from reports.errors import ReportError
from reports.inputs import INPUT_SEED, timing_inputs
from reports.latency import TimingConfig
from reports.measure import measure, parse_devices
from reports.results import RESULTS_FILE, read_results, write_results
from zoo.cards import check_replaceable, usual_mode


def zoo_variants(model: str, folder: Path, onnx: bool = True) -> tuple[list[Any], list[dict[str, str]]]:
    """The original zoo model saved into ``folder`` and its ONNX fp32 export; failures come back with reasons."""
    from compress.export import ExportOnnxConfig, export_onnx, onnx_exporter
    from compress.variant import OnnxVariant, TorchVariant

    original = TorchVariant(name="original", module=zoo.load(model), source={"zoo": model})
    original.save(folder)
    variants: list[Any] = [original]
    failed: list[dict[str, str]] = []
    if onnx:
        try:
            # the name, exporter and opset compress gives its original-onnx, so "vs ORT fp32" means the same in both
            path = export_onnx(original.module, timing_inputs(model, 1), folder / "original-onnx.onnx", opset=ExportOnnxConfig().opset)
            steps = [{"step": "export_onnx", "opset": ExportOnnxConfig().opset, "exported_with": onnx_exporter(path)}]
            exported = OnnxVariant(name="original-onnx", steps=steps, source={"zoo": model}, artifact=path)
            exported.save(folder)
            variants.append(exported)
        except Exception as exc:  # noqa: BLE001 - an export failure is a result, recorded with its reason
            failed.append({"name": "original-onnx", "reason": f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]})
    return variants, failed


def run_input_shape(run_dir: Path) -> tuple[int, ...]:
    """The input shape a run folder's model takes: recorded by compress, else the digits every user model is checked on."""
    return _recorded_input_shape(read_results(run_dir))


def _recorded_input_shape(results: dict[str, Any]) -> tuple[int, ...]:
    return tuple(results.get("input_shape") or (1, 28, 28))


def run_variants(run_dir: Path, threads: int, trust_code: bool = False) -> tuple[str | None, list[Any]]:
    """The model name and saved variants (original first) of a run folder written by compress or bench."""
    from compress.variant import METADATA_SUFFIX, load_variant

    results = read_results(run_dir)
    found = sorted((run_dir / "variants").glob(f"*{METADATA_SUFFIX}")) or sorted(run_dir.glob(f"*{METADATA_SUFFIX}"))
    if not found:
        raise ReportError(f"{run_dir} holds no saved variants (*{METADATA_SUFFIX} in {run_dir / 'variants'})")
    variants = [load_variant(p, threads=threads, trust_code=trust_code) for p in found]
    model = results.get("model")
    # a zoo model's own inputs (a generator's latent vectors); a user's model's recorded shape
    example = timing_inputs(model, 1) if model in zoo.list_models() else torch.zeros(1, *_recorded_input_shape(results))
    for variant in variants:
        _check_runs(variant, example, run_dir)
    order = {v["name"]: i for i, v in enumerate(results["variants"])}
    variants.sort(key=lambda v: (v.name != "original", order.get(v.name, len(order)), v.name))
    return results.get("model"), variants


def _check_runs(variant: Any, example: torch.Tensor, run_dir: Path) -> None:
    """Refuse in one line a loaded variant that fails on an input of its run's shape (its builder's code changed since, say)."""
    try:
        with torch.no_grad():  # not inference mode: a compiled PT2E program would recompile for its tensors
            variant(example)
    except Exception as exc:  # noqa: BLE001 - any error of a user's forward; bench measures nothing of a model that cannot run
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ReportError(f"variant {variant.name} of {run_dir} fails on an input of shape {tuple(example.shape)} ({detail}); "
                          "its model's code may have changed since the run: re-run the compress command in its results.json") from None


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; name a folder")
    check_replaceable(out, RESULTS_FILE)  # first: --force would not help with a folder slimlens did not write
    if out.exists() and any(out.iterdir()) and not force:
        raise ReportError(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create --out {out}: {exc.strerror}") from None


def _move_into_place(tmp: Path, out: Path) -> None:
    # Rename the finished folder into place; an old one is moved aside first and removed only after.
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def bench(
    target: str,
    out: str | Path,
    devices: str | Sequence[str] = "cpu",
    cfg: TimingConfig = TimingConfig(),
    *,
    memory: bool = True,
    onnx: bool = True,
    html: bool = True,
    force: bool = False,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
    trust_code: bool = False,
) -> Path:
    """Measure ``target`` (a zoo model name or a run folder) and write ``out/results.json`` (+ report.html); returns ``out``."""
    devices = parse_devices(devices)  # fail before any work
    out = Path(out).resolve()  # "--out ." has no name to stage a folder beside
    source = Path(target)
    is_run = source.is_dir()
    if not is_run and target not in zoo.list_models():
        raise ReportError(f"{target!r} is neither a zoo model ({', '.join(zoo.list_models())}) nor a run folder holding {RESULTS_FILE}")
    if is_run and (out.resolve() == source.resolve() or out.resolve() in source.resolve().parents):
        # replacing --out would delete the variants being measured, and results.json would point at them
        raise ReportError(f"--out {out} would replace the run folder {source} being measured; name another folder")
    _prepare_out(out, force)
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as exc:
        raise ReportError(f"cannot create --out {out}: {exc.strerror or exc}; name a writable folder") from None
    usual_mode(tmp)
    try:
        failed: list[dict[str, str]] = []
        if is_run:
            model, variants = run_variants(source, cfg.threads, trust_code)
        else:
            model = target
            (tmp / "variants").mkdir()
            variants, failed = zoo_variants(model, tmp / "variants", onnx)
        shape = run_input_shape(source) if is_run else None  # a user's model is timed on noise of its own input shape
        results = measure(variants, model, devices, cfg, input_shape=shape, memory=memory, run_dir=tmp, seed=INPUT_SEED, command=command,
                          progress=progress)
        results["recipe"] = {"name": "bench", "steps": [], "note": f"measured without compressing ({'variants of ' + str(source) if is_run else 'zoo model'})"}
        if failed:
            results["failed_variants"] = failed
        if is_run:  # facts about the original that bench does not re-measure travel with the run
            source_results = read_results(source)
            for key in ("sensitivity", "primary_metric", "higher_is_better"):
                if key in source_results and key not in results:
                    results[key] = source_results[key]
        if is_run:  # artifacts stay in the measured run folder: record where
            for entry in results["variants"]:
                entry["artifact"] = str(Path(entry["artifact"]).resolve()) if entry.get("artifact") else None
        write_results(results, tmp)
        if html:
            from reports.render import render

            run = read_results(tmp)
            run["_dir"] = str(out)  # the report names the folder the run will live in, not the staging one
            render([run], tmp / "report.html")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
