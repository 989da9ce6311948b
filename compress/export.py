"""ONNX export with a dynamic batch axis, and the parity check of a variant against its PyTorch original.

>>> import zoo, tempfile
>>> from compress.export import export_onnx, check_parity
>>> from compress.variant import OnnxVariant
>>> model = zoo.load("seed-cnn")
>>> images = zoo.dataset("mnist", "test").images[:64]
>>> path = export_onnx(model, images[:2], tempfile.mkdtemp() + "/seed-cnn.onnx")
>>> check_parity(model, OnnxVariant("fp32-onnx", artifact=path), images)["passed"]
True
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import onnx
import torch
from torch import nn

from compress.context import CompressionData
from compress.steps import register_step
from compress.variant import OnnxVariant, removed_with, step_folder
from zoo import metrics
from zoo.errors import SlimlensError, first_line

Forward = Callable[[torch.Tensor], torch.Tensor]
EXPORTERS = ("dynamo", "legacy")
EXPORTER_KEY = "slimlens.exporter"  # metadata_props entry naming the exporter that wrote the file
INPUT_NAME, OUTPUT_NAME = "input", "output"
MIN_OPSET = 13  # per-channel QDQ quantization needs 13; both exporters write it


def check_opset(opset: int) -> None:
    """Raise a one-line SlimlensError for an ONNX opset the exporters and the installed onnx cannot write."""
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise SlimlensError(f"opset={opset} is outside what slimlens can export ({MIN_OPSET} to {newest} with onnx {onnx.__version__}); "
                            "e.g. opset = 18")


def written_opset(path: str | Path) -> int:
    """The default-domain opset an .onnx file declares."""
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class ExportError(SlimlensError):
    """A model could not be exported to ONNX; ``attempts`` maps each exporter tried to its failure reason."""

    def __init__(self, model: str, attempts: dict[str, str]):
        self.model = model
        self.attempts = attempts
        reasons = "; ".join(f"{exporter}: {reason}" for exporter, reason in attempts.items())
        super().__init__(f"cannot export {model} to ONNX ({reasons})")

    def record(self) -> dict[str, Any]:
        """The failure as a JSON-ready dict, for results.json."""
        return {"exported": False, "model": self.model, "attempts": self.attempts}


def export_onnx(
    module: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    opset: int = 18,
    exporter: str = "auto",
) -> Path:
    """Export ``module`` (float32 in, float32 out) to a self-contained ``.onnx`` file whose batch axis is dynamic.

    ``exporter`` is "dynamo" (torch.export based), "legacy" (TorchScript based, deprecated) or "auto":
    dynamo first, legacy if dynamo fails. The exporter used is stored in the file's metadata
    (``onnx_exporter(path)``); if every exporter fails an ``ExportError`` lists each one's reason.
    """
    if exporter not in (*EXPORTERS, "auto"):
        raise SlimlensError(f"unknown ONNX exporter {exporter!r}; use one of: auto, {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(module).eval()  # exporting may trace hooks into the module; keep the caller's untouched
    # torch.export specialises size-1 dimensions, so a batch of 1 would freeze the batch axis.
    example = example_input if example_input.shape[0] > 1 else example_input.expand(2, *example_input.shape[1:])
    attempts: dict[str, str] = {}
    # Written under a temporary name and renamed once checked and tagged: a failed or interrupted
    # export leaves no half-written .onnx where a finished one would be.
    partial = path.with_name(f".{path.name}.partial")
    try:
        for name in EXPORTERS if exporter == "auto" else (exporter,):
            try:
                _EXPORT[name](model, example.contiguous(), partial, opset)
                onnx.checker.check_model(str(partial))
                got = written_opset(partial)
            except Exception as exc:  # exporters raise many unrelated types; each reason is kept and reported
                attempts[name] = first_line(exc)
                continue
            if got != opset:  # the dynamo exporter falls back to its own opset when it cannot convert down
                attempts[name] = f"wrote opset {got}, not the requested {opset}"
                continue
            _tag_exporter(partial, name, attempts)
            partial.replace(path)
            return path
    finally:
        partial.unlink(missing_ok=True)
    raise ExportError(type(module).__name__, attempts)


def onnx_exporter(path: str | Path) -> dict[str, str]:
    """Which exporter wrote ``path`` and why earlier ones were skipped, from its metadata."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {k.removeprefix("slimlens."): v for k, v in props.items() if k.startswith("slimlens.")}


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Any:
    # The dynamo exporter logs a version-conversion traceback when it cannot write an older opset;
    # export_onnx reports that case in one line, so the traceback is noise on the user's terminal.
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")  # deprecation chatter from torch internals, not about this model
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, opset_version=opset, verbose=False, external_data=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
        )


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter always warns that it is deprecated; we record its use
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


_EXPORT = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def _strip_node_metadata(nodes: Any) -> None:
    for node in nodes:
        del node.metadata_props[:]
        for attribute in node.attribute:  # If/Loop/Scan bodies are graphs of their own
            for body in (attribute.g, *attribute.graphs):
                _strip_node_metadata(body.node)


def _tag_exporter(path: Path, exporter: str, skipped: dict[str, str]) -> None:
    proto = onnx.load(str(path))
    # The dynamo exporter annotates every node with its FX node and Python stack trace: debug text
    # that names local file paths, is not needed to run the model, and on a small network is a third
    # of the file, so a deployed artifact (and its size in results.json) would carry it for nothing.
    for nodes in (proto.graph.node, *(function.node for function in proto.functions)):
        _strip_node_metadata(nodes)
    onnx.helper.set_model_props(proto, {EXPORTER_KEY: exporter, **{f"slimlens.{k}_failed": v for k, v in skipped.items()}})
    onnx.save(proto, str(path))


def check_parity(
    reference: Forward,
    variant: Forward,
    inputs: torch.Tensor,
    atol: float | None = 1e-4,
    rtol: float = 1e-4,
    min_agreement: float = 1.0,
    batch_size: int = 256,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Compare ``variant``'s outputs with ``reference``'s on ``inputs`` (e.g. the test split).

    Passes when ``max_abs_diff <= atol + rtol * max|reference|`` (skipped with ``atol=None``, as for
    lossy int8 variants) and, for classifier outputs (batch, classes), when the fraction of
    inputs whose predicted class agrees is at least ``min_agreement`` (a single output column decides
    at ``threshold``: see ``zoo.metrics.decision_threshold``).
    """
    ref = metrics.batched_outputs(reference, inputs, batch_size)
    out = metrics.batched_outputs(variant, inputs, batch_size)
    if ref.shape != out.shape:
        return {"passed": False, "reason": f"output shape {tuple(out.shape)} differs from reference {tuple(ref.shape)}",
                "samples": len(inputs)}
    diff = (ref - out).abs()
    not_finite = int((~torch.isfinite(out)).sum()) + int((~torch.isfinite(ref)).sum())
    result: dict[str, Any] = {
        "samples": len(inputs),
        # NaN is no JSON number, and NaN > bound is False: a variant emitting NaN must neither pass nor break results.json
        "max_abs_diff": float(diff.max()) if not not_finite else None,
        "mean_abs_diff": float(diff.mean()) if not not_finite else None,
        "argmax_agreement": None,
        "tolerance": {"atol": atol, "rtol": rtol if atol is not None else None, "min_agreement": min_agreement},
    }
    failures = []
    if not_finite:
        result["not_finite_outputs"] = not_finite
        failures.append(f"{not_finite} of {out.numel() + ref.numel()} output values (variant and reference) are NaN or infinite")
    elif atol is not None:
        bound = atol + rtol * float(ref.abs().max())
        if result["max_abs_diff"] > bound:
            failures.append(f"max abs diff {result['max_abs_diff']:.3g} > {bound:.3g}")
    if ref.dim() == 2:  # classifier logits or a single probability column
        agreement = float((metrics.predicted_labels(ref, threshold) == metrics.predicted_labels(out, threshold)).double().mean())
        result["argmax_agreement"] = agreement
        if agreement < min_agreement:
            failures.append(f"argmax agreement {agreement:.4f} < {min_agreement}")
    result["passed"] = not failures
    if failures:
        result["reason"] = "; ".join(failures)
    return result


def parity_inputs(data: CompressionData, n: int | None = None) -> torch.Tensor:
    """The inputs a parity check uses: the test split (or its first ``n``), fixed latents for a generator,
    and for a discriminator the test digits plus as many of its generator's (what its metric judges)."""
    if data.task == "generation":
        return data.inputs(n or 256, seed=0)
    real = data.test.images if n is None else data.test.images[:n]
    if data.task == "discrimination":
        return torch.cat([real, data.generated(len(real), torch.Generator().manual_seed(0))])
    return real


@dataclass(frozen=True)
class ExportOnnxConfig:
    """Export the model as float32 ONNX (dynamic batch axis), run by ONNX Runtime."""

    opset: int = 18
    name: str = "fp32-onnx"
    exporter: str = "auto"  # "dynamo", "legacy" or "auto" (dynamo, falling back to legacy)

    def __post_init__(self) -> None:
        check_opset(self.opset)
        if self.exporter not in (*EXPORTERS, "auto"):  # a typo is refused when the recipe is read, not after the first steps
            raise SlimlensError(f"exporter={self.exporter!r} is unknown; use one of: auto, {', '.join(EXPORTERS)}")


@register_step("export_onnx", ExportOnnxConfig)
def export_onnx_step(model: nn.Module, config: ExportOnnxConfig, data: CompressionData,
                     progress: Callable[[str], None] = lambda message: None) -> OnnxVariant:
    """Export ``model`` to fp32 ONNX and return it as an ``OnnxVariant`` (the file lives in a temp folder until saved)."""
    progress(f"exporting {data.model_name} to ONNX (opset {config.opset})")
    with step_folder() as folder:
        path = export_onnx(model, data.example_input(2), folder / f"{config.name}.onnx", opset=config.opset, exporter=config.exporter)
    step = {"step": "export_onnx", **asdict(config), "exported_with": onnx_exporter(path)}
    return removed_with(OnnxVariant(name=config.name, steps=[step], source=dict(data.source), artifact=path), folder)
