"""PyTorch-native static int8: torchao PT2E with X86InductorQuantizer, then torch.compile; saved as a .pt2 program."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.context import CompressionData
from compress.finetune import clone
from compress.quantize.common import STATIC_FAMILIES, Progress, QuantizationError, no_progress, require_static_family, step_record
from compress.steps import register_step
from compress.variant import TorchVariant, VariantError
from zoo.errors import first_line


@dataclass(frozen=True)
class Pt2eInt8Config:
    """Static int8 the PyTorch-native way: torchao PT2E with X86InductorQuantizer, then torch.compile.

    ``compile=False`` keeps the converted program eager (reference int8 arithmetic, slow) for
    checking accuracy without paying for compilation.
    """

    samples: int = 64
    compile: bool = True
    name: str = "int8-pt2e"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise QuantizationError(f"PT2E int8 needs calibration inputs: samples={self.samples} must be at least 1")


class _FrozenCompiled(nn.Module):
    """``torch.compile`` of an int8 program, compiled (once per batch size) with Inductor's freezing on.

    Freezing lets Inductor pre-pack the int8 weights into oneDNN kernels. It is set around each call
    because passing it as a compile option fails in torch 2.14 (onednn.qconv_prepack has no fake
    kernel there); ``dynamic=False`` because with a symbolic batch the quantized-conv lowering fails
    a stride check.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def _compile_int8(program_module: nn.Module) -> nn.Module:
    return _FrozenCompiled(program_module)


def _split_reused_modules(graph_module: torch.fx.GraphModule) -> None:
    """Give each call of a module used twice (torchvision's BasicBlock calls one ReLU twice) its own source entry.

    The quantizer groups nodes into patterns by the module they came from (the innermost entry of
    ``nn_module_stack``); two calls of one ReLU then form a single "partition" with two outputs and
    annotation fails ("Input partition has more than one output node"). A call that lowers to one
    aten op is a partition of its own, so each such node gets a unique module name.
    """
    groups: dict[str, list[torch.fx.Node]] = {}
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")  # what the quantizer matches on after a non-strict export
        if node.op == "call_function" and stack:
            groups.setdefault(list(stack.values())[-1][0], []).append(node)
    for fqn, nodes in groups.items():
        if len(nodes) > 1 and len({n.target for n in nodes}) == 1:
            for i, node in enumerate(nodes):
                stack = node.meta["nn_module_stack"].copy()
                key, (_, kind) = list(stack.items())[-1]
                stack[key] = (f"{fqn}__call{i}", kind)
                node.meta["nn_module_stack"] = stack


def _quantized_layers(graph_module: torch.fx.GraphModule) -> int:
    """How many layers carry int8 weights: dequantize ops reading a stored constant rather than an activation."""
    return sum(node.op == "call_function" and "dequantize" in str(node.target) and node.args
               and isinstance(node.args[0], torch.fx.Node) and node.args[0].op == "get_attr"
               for node in graph_module.graph.nodes)


def _drop_unused_tensors(graph_module: torch.fx.GraphModule) -> None:
    """Delete parameters the converted graph no longer reads (the float weights its int8 copies replaced)."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    names = [n for n, _ in graph_module.named_parameters()] + [n for n, _ in graph_module.named_buffers()]
    for name in names:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)


@dataclass
class Pt2eVariant(TorchVariant):
    """A PT2E int8 program, saved as a torch.export ``.pt2`` archive (int8 weights) and compiled on load."""

    program: Any = None  # torch.export.ExportedProgram of the int8 model
    compiled: bool = True

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # compiled graphs do not accept inference-mode tensors they did not trace with
            return self.module(batch).float()

    def metadata(self) -> dict[str, Any]:
        """Metadata naming the PT2E loader."""
        return {**super().metadata(), "loader": "compress.quantize:load_pt2e_variant", "compiled": self.compiled}

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.pt2`` (torch.export.save) and metadata."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.artifact = directory / f"{self.name}.pt2"
        # Renamed into place so a crash leaves no half-written file; torch.export.save wants the .pt2 suffix.
        partial = directory / f".{self.name}.partial.pt2"
        try:
            torch.export.save(self.program, str(partial))
            partial.replace(self.artifact)
        finally:
            partial.unlink(missing_ok=True)
        return self._write_metadata(directory, {"sha256": hashlib.sha256(self.artifact.read_bytes()).hexdigest()})


# Every entry torch.export.save writes for a program of plain tensors, below the archive's root folder.
# torch.export.load reads anything else (pickled tensor subclasses, custom or opaque objects, the
# older zip layout) by full unpickling, which runs whatever code the file carries.
_PLAIN_ENTRIES = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
                            r"|data/sample_inputs/model\.pt|data/weights/(model_weights_config\.json|weight_\d+)"
                            r"|data/constants/(model_constants_config\.json|tensor_\d+)")
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"


def _refuse_unpickling(path: Path) -> None:
    """Raise VariantError unless ``path`` is a .pt2 archive that torch.export.load reads without unpickling code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # zipfile reads the last of two same-named entries and torch's reader the first (case-blind), so
            # a second copy of a config could show this check a clean one while torch unpickles the other
            seen: set[str] = set()
            twice = [n for n in names if n.lower() in seen or seen.add(n.lower())]
            root = names[0].partition("/")[0] + "/" if names else ""
            risky = [n for n in names if not (n.startswith(root) and _PLAIN_ENTRIES.fullmatch(n[len(root):]))]
            for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
                entries = json.loads(archive.read(root + config))["config"]
                risky += [f"{config}: {key}" for key, entry in entries.items() if entry["use_pickle"]]
            sample_inputs = archive.read(root + _SAMPLE_INPUTS)
    except Exception as exc:  # zipfile, json and a malformed config raise many types; the file is not a .pt2 we wrote
        raise VariantError(f"{path} is not a torch.export .pt2 archive slimlens can read ({first_line(exc, 200)})") from None
    if twice:
        raise VariantError(f"{path} holds the entry {twice[0]} twice, and torch.export.load may read another copy than the one "
                           "checked for pickled code; slimlens writes each entry once, so it does not load this file")
    try:  # torch.export.load retries these with full unpickling when a weights-only load fails
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol chatter about a pickle that is refused below anyway
            torch.load(io.BytesIO(sample_inputs), weights_only=True)
    except Exception:  # torch raises pickle.UnpicklingError or RuntimeError for what weights_only refuses
        risky.append(_SAMPLE_INPUTS)
    if risky:
        raise VariantError(f"{path} holds {risky[0]}, which torch.export.load would unpickle (that can run code in the file); "
                           "slimlens saves plain tensors only, so it does not load this file")


class _LoggedErrors(logging.Handler):
    """Keeps the exceptions a logger reports, without printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _export_load(path: Path) -> Any:
    """torch.export.load, failing with one line that gives the reason."""
    # torch.export.load logs the real error (e.g. an operator it cannot resolve) with pages of traceback
    # on its own stderr handler, then raises a RuntimeError that only points at that log
    logger = logging.getLogger("torch.export")
    caught, saved = _LoggedErrors(), (logger.handlers, logger.propagate)
    logger.handlers, logger.propagate = [caught], False
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # deserialization raises many types; the reason is what the user needs
        reason = first_line(caught.errors[-1] if caught.errors else exc, 300).split(". ")[0]  # torch appends paragraphs of advice
        raise VariantError(f"{path} cannot be loaded as a PT2E int8 program ({reason}); "
                           "it may come from another torch version: re-run slimlens compress") from None
    finally:
        logger.handlers, logger.propagate = saved


def load_pt2e_variant(meta: dict[str, Any], common: dict[str, Any]) -> Pt2eVariant:
    """Load a saved PT2E int8 program and compile it as it was."""
    if meta.get("sha256") and hashlib.sha256(Path(common["artifact"]).read_bytes()).hexdigest() != meta["sha256"]:
        raise QuantizationError(f"{common['artifact']} does not match its metadata sha256 (corrupt or replaced)")
    _refuse_unpickling(Path(common["artifact"]))
    # the program calls quantized_decomposed ops, which exist only once this module has registered them
    from torch.ao.quantization.fx import _decomposed  # noqa: F401

    if meta.get("compiled"):
        try:  # importing the quantizer registers the Inductor passes that packed the int8 weights when it was made
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
        except ImportError as exc:
            raise QuantizationError(f"a compiled PT2E int8 variant needs torchao ({exc}); pip install torchao") from None
    program = _export_load(Path(common["artifact"]))
    module = program.module()
    return Pt2eVariant(**common, module=_compile_int8(module) if meta.get("compiled") else module,
                       program=program, compiled=bool(meta.get("compiled")))


@register_step("quantize_pt2e", Pt2eInt8Config, families=STATIC_FAMILIES)
def quantize_pt2e(model: nn.Module, config: Pt2eInt8Config, data: CompressionData,
                  progress: Progress = no_progress) -> Pt2eVariant:
    """torch.export → prepare_pt2e(X86InductorQuantizer) → calibrate → convert_pt2e → torch.compile (needs torchao)."""
    require_static_family(data, "PT2E static int8", "X86InductorQuantizer does not quantize recurrent layers", model)
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise QuantizationError(f"PT2E int8 needs torchao ({exc}); pip install torchao, or use quantize_static_onnx") from None
    example = data.example_input(2)
    shapes = ({0: torch.export.Dim("batch")},)
    progress("PT2E: exporting and inserting observers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export/torchao deprecation chatter
        try:
            captured = torch.export.export(clone(model).eval(), (example,), dynamic_shapes=shapes).module()
            _split_reused_modules(captured)
            quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(captured, quantizer)
            with torch.no_grad():
                prepared(data.inputs(config.samples))
            converted = convert_pt2e(prepared)
        except Exception as exc:  # torch.export raises many types (a forward that branches on its data, say)
            # No route to recommend for a forward that branches on its data: TorchScript tracing (the ONNX
            # fallback) would freeze one branch and give a model that is wrong on other inputs.
            raise QuantizationError(f"PT2E could not capture or quantize {data.model_name} ({type(exc).__name__}: "
                                    f"{first_line(exc)[:200]}); torch.export needs a forward without Python control flow "
                                    "on tensor values (use torch.where or torch.cond there)") from None
        layers = _quantized_layers(converted)
        if layers == 0:  # the quantizer skips ops it has no pattern for; an all-float "int8" model would be mislabelled
            raise QuantizationError(f"X86InductorQuantizer quantized no layer of {data.model_name} (family {data.family}): "
                                    "it handles Conv2d and Linear, not ConvTranspose2d; use quantize_static_onnx instead")
        _drop_unused_tensors(converted)
        program = torch.export.export(converted, (example,), dynamic_shapes=shapes)
    module = program.module()
    if config.compile:
        progress("PT2E: torch.compile (each batch size compiles once)")
        module = _compile_int8(module)
        try:
            with torch.no_grad():
                module(example)
        except Exception as exc:  # Inductor raises many types; the reason is what the user needs
            raise QuantizationError(f"torch.compile of the PT2E int8 model failed ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]}); use compile=false or quantize_static_onnx") from None
    step = step_record("quantize_pt2e", config, backend=f"torchao PT2E X86InductorQuantizer (torchao {_version('torchao')})",
                       quantized_layers=layers)
    return Pt2eVariant(name=config.name, steps=[step], source=dict(data.source), module=module,
                       stand_in=clone(model).eval(), program=program, compiled=config.compile)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
