"""Variants: one runnable form of a model, whatever runs it.

A ``Variant`` is what compression returns and what reports measure and explain/ perturbs:

* ``name``     a short label ("original", "int8-onnx", ...),
* ``format``   how it runs: ``"torch"`` (a PyTorch module) or ``"onnx"`` (an ONNX Runtime session),
* ``steps``    the compression steps that made it, each a dict with its settings,
* ``__call__`` a float32 batch tensor in, a float32 output tensor out (CPU), for every format,
* ``stand_in``  for a variant without gradients (int8, ONNX): a float ``nn.Module`` that computes the
  same function (e.g. the dequantized copy), for gradient-based explanations; ``None`` otherwise,
* ``save(dir)`` writes the deployable artifact and ``<name>.variant.json`` (its metadata) into ``dir``;
  ``load_variant(json_path)`` reads it back,
* ``original_weights_sha256``  which weights it was compressed from (see :func:`zoo.weights.weights_sha256`), so
  ``slimlens explain --variant`` can refuse to compare it with a different original.

So a PyTorch module and an ONNX Runtime session are interchangeable wherever a forward function
is expected (``zoo.evaluate(name, forward=variant)`` for one).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from zoo.cards import write_atomic
from zoo.errors import SlimlensError, first_line
from zoo.weights import read_state_dict, save_state_dict, sha256_file

METADATA_SUFFIX = ".variant.json"
MODEL_FILE_SUFFIXES = (".onnx", ".safetensors", ".pt", ".pth", ".bin")  # what a variant's artifact may be, never its metadata


class VariantError(SlimlensError):
    """A variant cannot be saved, loaded or run."""


@dataclass
class Variant:
    """Base of every variant: a name, a format, the steps that made it, and a forward call."""

    name: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # how to rebuild the architecture, e.g. {"zoo": "seed-cnn"}
    artifact: Path | None = None
    stand_in: nn.Module | None = None
    format: str = "abstract"
    original_weights_sha256: str | None = None  # weights_sha256 of the model it was compressed from; None where unknown

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """What ``<name>.variant.json`` holds."""
        return {
            "name": self.name,
            "format": self.format,
            "steps": self.steps,
            "source": self.source,
            "artifact": self.artifact.name if self.artifact else None,
            "original_weights_sha256": self.original_weights_sha256,
        }

    def _write_metadata(self, directory: Path, extra: dict[str, Any] | None = None) -> Path:
        path = directory / f"{self.name}{METADATA_SUFFIX}"
        write_atomic(path, (json.dumps({**self.metadata(), **(extra or {})}, indent=2) + "\n").encode())
        return path


@dataclass
class TorchVariant(Variant):
    """A PyTorch module run eagerly in eval mode and inference mode."""

    module: nn.Module | None = None
    format: str = "torch"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch).float()

    def save(self, directory: str | Path) -> Path:
        """Write weights as safetensors (with every tensor's shape, so pruned layers rebuild) and metadata."""
        directory = Path(directory)
        self.artifact = directory / f"{self.name}.safetensors"
        sha = save_state_dict(self.module, self.artifact)
        shapes = {k: list(v.shape) for k, v in self.module.state_dict().items()}
        return self._write_metadata(directory, {"sha256": sha, "shapes": shapes, "groups": conv_groups(self.module)})


@dataclass
class OnnxVariant(Variant):
    """An .onnx file run by an ONNX Runtime CPU session (threads fixed so timings are comparable)."""

    threads: int = 1
    format: str = "onnx"
    _session: Any = None

    @property
    def session(self):
        """The ONNX Runtime session, created on first use."""
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            try:
                self._session = ort.InferenceSession(str(self.artifact), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for bad files
                raise VariantError(f"ONNX file {self.artifact} cannot be loaded by ONNX Runtime: {str(exc).splitlines()[0]}") from None
        return self._session

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        session = self.session
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)}
        return torch.from_numpy(session.run(None, feed)[0]).float()

    def save(self, directory: str | Path) -> Path:
        """Copy the .onnx file into ``directory`` (if elsewhere) and write metadata."""
        directory = Path(directory)
        target = directory / f"{self.name}.onnx"
        if self.artifact is None or not Path(self.artifact).is_file():
            raise VariantError(f"variant {self.name} has no ONNX file to save")
        if Path(self.artifact).resolve() != target.resolve():
            write_atomic(target, Path(self.artifact).read_bytes())
            self.artifact = target
            self._session = None
        return self._write_metadata(directory, {"sha256": sha256_file(self.artifact), **self._save_stand_in(directory)})

    def _save_stand_in(self, directory: Path) -> dict[str, Any]:
        """Write the float stand-in beside the .onnx file when its weights rebuild from ``source``; its metadata keys."""
        if self.stand_in is None or not self.source:
            return {}
        state = self.stand_in.state_dict()
        try:  # a stand-in of another shape (e.g. QAT's BatchNorm-folded graph) stays in memory only
            rebuilt = _rebuild_module(self.source)
            _fit_shapes(rebuilt, state, conv_groups(self.stand_in))
            rebuilt.load_state_dict(state)
        except Exception:
            return {}
        path = directory / f"{self.name}.stand-in.safetensors"
        return {"stand_in": path.name, "stand_in_sha256": save_state_dict(self.stand_in, path), "stand_in_groups": conv_groups(self.stand_in)}


@contextlib.contextmanager
def step_folder() -> Iterator[Path]:
    """A fresh folder for a step's ONNX files, removed if the step fails; hand it to ``removed_with`` on success."""
    folder = Path(tempfile.mkdtemp(prefix="slimlens-"))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def removed_with(variant: Variant, folder: Path) -> Variant:
    """``variant``, with ``folder`` deleted once the variant is garbage-collected (or at exit).

    A variant's ``save`` copies its artifact out, so the step's folder is only needed while the
    variant lives; called directly (outside ``compress.run``) a step then leaves nothing behind.
    """
    weakref.finalize(variant, shutil.rmtree, str(folder), True)
    return variant


def _import_from_here_too(module_name: str) -> Any:
    """Import ``module_name``; when its package is nowhere on the path, from the current folder, which a console script's path leaves out."""
    import importlib
    import sys

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.partition(".")[0]
        here = Path.cwd()
        if exc.name != top or str(here) in sys.path or not ((here / top).is_dir() or (here / f"{top}.py").is_file()):
            raise
        # only for this import: left on the path, a file of the folder could stand in for a module imported later
        # (an ./onnx.py for onnx); the package, once imported, finds its own submodules through its __path__
        sys.path.insert(0, str(here))
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(str(here))


def build_module(path: str) -> nn.Module:
    """The module that ``package.module:function`` (a function or class taking no arguments) builds; one-line errors."""
    module_name, _, attr = path.partition(":")
    try:
        builder = getattr(_import_from_here_too(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SlimlensError(f"cannot import model builder {path!r} ({exc}); give a zoo name or package.module:function, "
                            "importable from the current folder or from PYTHONPATH") from None
    try:
        built = builder()
    except Exception as exc:  # the user's own code: any error it raises is theirs to fix, in one line
        raise SlimlensError(f"{path}() failed: {first_line(exc, 200)}; it must build the model with no arguments") from None
    if not isinstance(built, nn.Module):
        raise SlimlensError(f"builder {path} returned {type(built).__name__}, not a torch.nn.Module")
    return built


def _rebuild_module(source: dict[str, Any]) -> nn.Module:
    if "zoo" in source:
        import zoo

        return zoo.build(source["zoo"])
    if "builder" in source:
        try:
            return build_module(source["builder"])
        except SlimlensError as exc:
            raise VariantError(str(exc)) from None
    raise VariantError(f"variant metadata names no architecture to rebuild (source={source})")


def _metadata_naming(path: Path) -> Path | None:
    """The ``*.variant.json`` beside ``path`` that names it as its artifact or stand-in, if any."""
    for candidate in sorted(path.parent.glob(f"*{METADATA_SUFFIX}")):
        try:
            meta = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and path.name in (meta.get("artifact"), meta.get("stand_in")):
            return candidate
    return None


def _not_metadata(path: Path) -> str:
    """One line for a model (or other binary) file passed where its ``.variant.json`` belongs, naming that file when it is there."""
    what = "a model file" if path.suffix.lower() in MODEL_FILE_SUFFIXES else "a binary file"
    found = _metadata_naming(path)
    if found is not None:
        return f"{path} is {what}, not variant metadata; pass the {METADATA_SUFFIX} beside it: {found}"
    return (f"{path} is {what}, not variant metadata; pass the <name>{METADATA_SUFFIX} that slimlens compress "
            f"wrote beside the model file (none in {path.parent} names {path.name})")


def load_variant(path: str | Path, threads: int = 1, trust_code: bool = False, trusted_builder: str | None = None) -> Variant:
    """Load a saved variant from its ``<name>.variant.json`` (or from a folder holding exactly one).

    A variant of a user's own model names the ``package.module:function`` that rebuilds its
    architecture; importing and calling it runs code the file chose, so it needs ``trust_code``.
    Zoo architectures need nothing, nor does ``trusted_builder``, a builder the caller has already called.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(f"*{METADATA_SUFFIX}"))
        below = sorted((path / "variants").glob(f"*{METADATA_SUFFIX}"))
        if not found and below:  # a compress run folder: its variants are one level down
            example = below[0]
            raise VariantError(f"{path} is a slimlens compress run folder; its variants are in {path / 'variants'}/: "
                               f"name one *{METADATA_SUFFIX} file there, e.g. {example}")
        if len(found) != 1:
            names = f" ({', '.join(f.name for f in found[:3])}{', …' if len(found) > 3 else ''})" if found else ""
            raise VariantError(f"{path} holds {len(found)} variant metadata files{names}; name one *{METADATA_SUFFIX} file")
        path = found[0]
    if path.suffix.lower() in MODEL_FILE_SUFFIXES and path.is_file():
        raise VariantError(_not_metadata(path))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VariantError(f"variant metadata {path} not found") from None
    except UnicodeDecodeError:  # a binary file: some model or weights file rather than its metadata
        raise VariantError(_not_metadata(path)) from None
    except json.JSONDecodeError as exc:
        raise VariantError(f"variant metadata {path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise VariantError(f"variant metadata {path} has no variant name; it was not written by slimlens")
    try:
        return _load_from_metadata(path, meta, threads, trust_code, trusted_builder)
    except SlimlensError:
        raise
    except (OSError, KeyError, TypeError, AttributeError, IndexError, ValueError, RuntimeError) as exc:
        # a damaged or hand-edited metadata file or artifact (a folder where a file belongs, a key the
        # model lacks, a list where a name belongs) fails in many places; the user needs one line
        raise VariantError(f"variant {path} cannot be loaded ({first_line(exc, 200)}); "
                           "it is damaged or was not written by this slimlens: re-run slimlens compress") from None


def _remake_advice(metadata: Path) -> str:
    """How to get a variant's files back: they were made by a compress run, not shipped or trained."""
    results = metadata.parent.parent / "results.json"
    if results.is_file():
        return f"re-run the slimlens compress command that made it (recorded as \"command\" in {results})"
    return "re-run the slimlens compress command that made it"


def _load_from_metadata(path: Path, meta: dict[str, Any], threads: int, trust_code: bool, trusted_builder: str | None = None) -> Variant:
    """The variant ``meta`` (read from ``path``) describes."""
    source = meta.get("source") or {}
    builder = source.get("builder") if isinstance(source, dict) and "zoo" not in source else None
    # a plain ONNX file runs in ONNX Runtime and never calls the builder
    calls_builder = not (meta.get("format") == "onnx" and not meta.get("stand_in") and not meta.get("loader"))
    # a builder the caller already imported and called (the model being explained) runs no code not yet trusted
    if builder is not None and calls_builder and not str(builder).startswith("zoo.") and not trust_code and builder != trusted_builder:
        raise VariantError(f"{path} rebuilds its architecture by calling {builder}(), code named by the file; "
                           "pass --trust-code (trust_code=True) if you made this run or trust it")
    for key in ("artifact", "stand_in"):  # files beside the metadata only: it must not point a reader elsewhere on disk
        value = meta.get(key)
        if value is not None and (not isinstance(value, str) or Path(value).name != value or value in ("", ".", "..")):
            raise VariantError(f"variant metadata {path} gives {key} {value!r}; it must name a file in the same folder")
    for key, what in (("artifact", "model file"), ("stand_in", "float stand-in")):
        named = path.parent / meta[key] if meta.get(key) else None
        if named is not None and not named.exists():
            raise VariantError(f"{named}, the {what} of variant {path.name}, is missing; {_remake_advice(path)}")
    artifact = path.parent / meta["artifact"] if meta.get("artifact") else None
    original = meta.get("original_weights_sha256")  # absent from variants written before it was recorded
    if original is not None and not isinstance(original, str):
        raise VariantError(f"variant metadata {path} gives original_weights_sha256 {original!r}; it must be a sha256 hex string or null")
    common = {"name": meta["name"], "steps": meta.get("steps", []), "source": meta.get("source", {}), "artifact": artifact,
              "original_weights_sha256": original}
    if meta.get("loader"):  # an artifact with its own reader (e.g. int8 weights) names it as "module:function"
        import importlib

        module_name, _, attr = str(meta["loader"]).partition(":")
        # The file is data: it may only pick one of slimlens' own readers, never run other code.
        if not module_name.startswith("compress."):
            raise VariantError(f"variant metadata {path} names loader {meta['loader']!r}, which is not one of slimlens' readers")
        try:
            reader = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise VariantError(f"variant metadata {path} names loader {meta['loader']!r}, which does not exist ({exc})") from None
        try:
            return reader(meta, common)
        except (KeyError, TypeError) as exc:  # a missing key or a None where a path or list belongs
            raise VariantError(f"variant metadata {path} is incomplete for its {meta['loader']} reader "
                               f"({type(exc).__name__}: {exc})") from None
    if meta.get("format") == "onnx":
        if meta.get("sha256") and artifact is not None and sha256_file(artifact) != meta["sha256"]:
            raise VariantError(f"{artifact} does not match its metadata sha256 (corrupt or replaced); re-run slimlens compress")
        stand_in = None
        if meta.get("stand_in"):  # the float model it was quantized from, for gradient explanations
            stand_in = _rebuild_module(meta["source"])
            state = read_state_dict(path.parent / meta["stand_in"], expected_sha256=meta.get("stand_in_sha256"))
            _fit_shapes(stand_in, state, meta.get("stand_in_groups"))
            stand_in.load_state_dict(state)
            stand_in.eval()
        return OnnxVariant(**common, threads=threads, stand_in=stand_in)
    if meta.get("format") == "torch":
        module = _rebuild_module(meta["source"])
        if meta.get("storage"):  # a compressed-storage artifact (compress/sparse.py) decodes to a float state dict
            from compress.sparse import CompressedVariant, read_compressed

            state, kind = read_compressed(artifact, meta["storage"], expected_sha256=meta.get("sha256")), CompressedVariant
        else:
            state, kind = read_state_dict(artifact, expected_sha256=meta.get("sha256")), TorchVariant
        _check_recorded_shapes(path, state, meta.get("shapes"))
        _fit_shapes(module, state, meta.get("groups"))
        module.load_state_dict(state)
        return kind(**common, module=module.eval())
    raise VariantError(f"variant {path} has unknown format {meta.get('format')!r}")


def plain_weights(model: nn.Module) -> nn.Module:
    """``model`` with weight_norm, spectral_norm and other parametrizations baked into plain weights, in place.

    A parametrized ``weight`` is recomputed from its parts at every call, so writing into it (a mask, a
    sensitivity probe, a shared value) changes nothing: pruning and weight sharing work on the baked-in
    weights, which is also what a deployed model holds.
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for module in model.modules():
        if parametrize.is_parametrized(module):
            # not parametrize.remove_parametrizations: it deletes the property from the module's class, which a
            # deep copy shares with the model it was copied from, and so took `weight` away from the caller's model
            with torch.no_grad():
                baked = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            trainable = any(p.requires_grad for p in module.parametrizations.parameters())
            module.__class__ = type(module).__bases__[0]  # this instance only: the class parametrize injected stays as it was
            del module._modules["parametrizations"]
            for name, value in baked.items():
                module.register_parameter(name, nn.Parameter(value, requires_grad=trainable))
        for hook in list(module._forward_pre_hooks.values()):  # the older hook-based weight_norm and spectral_norm
            if isinstance(hook, WeightNorm):
                torch.nn.utils.remove_weight_norm(module, hook.name)
            elif isinstance(hook, SpectralNorm):
                torch.nn.utils.remove_spectral_norm(module, hook.name)
    return model


def _check_recorded_shapes(path: Path, state: dict[str, torch.Tensor], shapes: Any) -> None:
    """Refuse weights whose shapes differ from those the metadata recorded when the variant was saved."""
    if not isinstance(shapes, dict):
        return  # metadata from before shapes were recorded
    for key, tensor in state.items():
        if key in shapes and list(tensor.shape) != list(shapes[key]):
            raise VariantError(f"variant {path}: its weights hold {key} of shape {tuple(tensor.shape)} where its metadata "
                               f"records {tuple(shapes[key])}; the weights file was replaced: re-run slimlens compress")


def _pruned_groups(conv: nn.modules.conv._ConvNd) -> int:
    """A best guess at the groups of a convolution resized to pruned shapes, for metadata that did not record them.

    Torch-Pruning removes whole groups of a depthwise convolution (groups = channels: 16 → 8 channels is
    8 groups), so each group keeps its channels; a weight whose groups lost channels instead keeps its groups.
    A grouped convolution that lost only output channels looks like one that lost whole groups: the
    recorded groups decide that case.
    """
    if conv.groups == 1:
        return 1
    rows, per_row = (conv.in_channels, conv.out_channels) if conv.transposed else (conv.out_channels, conv.in_channels)
    rows_per_group, per_row_in_group = rows // conv.groups, per_row // conv.groups  # the weight's dims 0 and 1 are per group
    w = conv.weight
    if w.shape[1] == per_row_in_group and w.shape[0] % rows_per_group == 0:
        return w.shape[0] // rows_per_group
    return conv.groups


def conv_groups(module: nn.Module) -> dict[str, int]:
    """The ``groups`` of every convolution of ``module`` by name: saved with a variant, since pruned weights alone cannot tell them."""
    return {name: m.groups for name, m in module.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def _fit_shapes(module: nn.Module, state: dict[str, torch.Tensor], groups: Any = None) -> None:
    """Resize parameters and buffers to the saved shapes, so a channel-pruned model rebuilds from its builder.

    Pruning only removes channels, so a tensor with more dimensions or a larger size than the
    architecture's is refused: those weights belong to another model.
    """
    if not any(".parametrizations." in key or key.startswith("parametrizations.") for key in state):
        plain_weights(module)  # a variant saved after pruning baked in the architecture's weight_norm or spectral_norm
    for key, tensor in state.items():
        owner_name, _, attr = key.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            raise VariantError(f"the weights hold {key}, which {type(module).__name__} does not have; "
                               "they belong to another architecture") from None
        current = getattr(owner, attr, None)
        if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            if tensor.dim() != current.dim() or any(a > b for a, b in zip(tensor.shape, current.shape)):
                raise VariantError(f"the weights hold {key} of shape {tuple(tensor.shape)}, which pruning cannot make from "
                                   f"{type(module).__name__}'s {tuple(current.shape)}; they belong to another architecture")
            # the architecture's dtype, not the file's: a pruned half-precision file must not leave these
            # layers in float16 beside float32 ones
            replacement = torch.empty(tensor.shape, dtype=current.dtype)
            if isinstance(current, nn.Parameter):
                setattr(owner, attr, nn.Parameter(replacement, requires_grad=current.requires_grad))
            else:
                owner.register_buffer(attr, replacement)
    recorded = groups if isinstance(groups, dict) else {}  # metadata from before groups were saved has none
    for name, sub in module.named_modules():  # keep the layers' own size attributes true to their new weights
        if isinstance(sub, nn.modules.conv._ConvNd):  # 1-D to 3-D, transposed too
            w = sub.weight
            sub.groups = recorded[name] if isinstance(recorded.get(name), int) else _pruned_groups(sub)
            out_ch, in_ch = (w.shape[1] * sub.groups, w.shape[0]) if sub.transposed else (w.shape[0], w.shape[1] * sub.groups)
            sub.out_channels, sub.in_channels = out_ch, in_ch
        elif isinstance(sub, nn.Linear):
            sub.out_features, sub.in_features = sub.weight.shape
        elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.num_features = sub.weight.shape[0] if sub.weight is not None else sub.running_mean.shape[0]
        elif isinstance(sub, nn.RNNBase):  # hidden units removed by structured pruning
            sub.hidden_size, sub.input_size = sub.weight_hh_l0.shape[1], sub.weight_ih_l0.shape[1]
