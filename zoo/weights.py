"""Loading and saving zoo weights: safetensors only, every file checked against its card's sha256."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from zoo.cards import write_atomic
from zoo.errors import WeightsError


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_state_dict(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict, refusing a missing, corrupt or mismatching file with one clear line."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} is missing; restore it from the repository or retrain the model") from None
    except OSError as exc:  # a folder, or a file this user may not read
        raise WeightsError(f"weights file {path} cannot be read ({exc.strerror or exc}); name a readable safetensors file") from None
    if expected_sha256 is not None:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != expected_sha256:
            raise WeightsError(
                f"weights file {path} has sha256 {digest[:16]}…, expected {expected_sha256[:16]}… from its card "
                "(truncated, corrupt or replaced); restore it or retrain the model"
            )
    try:
        return load_safetensors_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"weights file {path} is not a readable safetensors file ({exc}); restore it or retrain the model") from None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Load ``state`` into ``model`` strictly, turning a shape or key mismatch into a one-line WeightsError."""
    expected = model.state_dict()
    state = _without_wrapper_prefix(state, expected)
    # A BatchNorm's step counter, which inference never reads, may be left out of a file: it starts at 0, as
    # load_state_dict starts it for a dict without version metadata (a torch.save'd state_dict keeps that
    # metadata, and then load_state_dict itself refuses the gap). With momentum=None, fine-tuning then
    # averages its running statistics afresh from the first batch.
    counters = {k: torch.zeros_like(v) for k, v in expected.items() if k not in state and k.rpartition(".")[2] == "num_batches_tracked"}
    if counters:
        state = copy.copy(state)  # the caller's dict stays as it was; an OrderedDict keeps its _metadata
        state.update(counters)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    # load_state_dict would cast int8 codes into float weights as if they were values: a quantized
    # checkpoint passed as float weights loads without a word and computes nonsense
    retyped = [f"{k} {str(state[k].dtype).removeprefix('torch.')} in the file, {str(v.dtype).removeprefix('torch.')} in the model"
               for k, v in expected.items() if k in state and state[k].is_floating_point() != v.is_floating_point()]
    problems = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped),
                                   ("with integer values where the model has floats, or the reverse", retyped)) if keys]
    if problems:
        raise WeightsError(f"weights file {path} does not fit {type(model).__name__}: tensors {'; '.join(problems)}; "
                           "pass weights saved from this same architecture")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype torch cannot copy
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
        raise WeightsError(f"weights file {path} does not fit {type(model).__name__}: {detail}") from None
    return model


# What wrappers put in front of every key: DataParallel/DistributedDataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _without_wrapper_prefix(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with a wrapper's prefix taken off every key, when that is what keeps it from matching ``expected``."""
    stripped = True
    while stripped:  # nested wrappers: torch.compile of a DDP model saves _orig_mod.module.
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
                state, stripped = {k[len(prefix):]: v for k, v in state.items()}, True
    return state


def _safetensors_blob(model: nn.Module) -> bytes:
    return save_safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})


def save_state_dict(model: nn.Module, path: Path) -> str:
    """Save ``model``'s state dict as safetensors (atomically) and return the file's sha256."""
    blob = _safetensors_blob(model)
    write_atomic(Path(path), blob)
    return hashlib.sha256(blob).hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 of ``model``'s state dict written as safetensors: a zoo card's weights sha256 for the same weights.

    It hashes the weights themselves, not the file they came from, so a checkpoint read from a
    ``.pt`` file and the same weights in a zoo ``--weights-root`` hash alike.
    """
    return hashlib.sha256(_safetensors_blob(model)).hexdigest()
