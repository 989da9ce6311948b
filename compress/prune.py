"""Pruning steps: structured channel pruning (Torch-Pruning) and gradual unstructured magnitude pruning.

>>> import zoo
>>> from compress.context import data_for
>>> from compress.prune import PruneStructuredConfig, prune_structured
>>> small = prune_structured(zoo.load("seed-cnn"), PruneStructuredConfig(ratio=0.5, epochs=0.05), data_for("seed-cnn"))
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch_pruning.pruner.function import LSTMPruner

from compress.context import CompressionData
from compress.distill import soft_target_loss
from compress.variant import plain_weights
from compress.finetune import BATCH_SIZE, check_budget, finetune, task_loss, trainable_clone
from compress.steps import register_step
from zoo.errors import SlimlensError, first_line
from zoo.footprint import module_params

Progress = Callable[[str], None]
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
# Layers whose `weight` is the whole of their matrix, so magnitude pruning and weight sharing can treat it
# element by element. A MultiheadAttention keeps its input projection under other names, and a user's
# module may hold a bare nn.Parameter: those stay dense, and dense_weights_left names them.
MAGNITUDE_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                      nn.Linear, nn.Embedding, nn.EmbeddingBag)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise SlimlensError(f"{name}={value} is out of range; give a fraction in [0, 1), e.g. {name}=0.5")


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients, every submodule's mode restored after: a probe must not move BatchNorm statistics."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _probe(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    try:
        return model(example)
    except Exception as exc:
        raise SlimlensError(f"{type(model).__name__} fails on an example input of shape {tuple(example.shape)} "
                            f"({first_line(exc, 200)})") from None


def output_shape(model: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """The shape of ``model``'s output on ``example``, computed without changing the model."""
    with _evaluating(model):
        return tuple(_probe(model, example).shape)


def output_layer(model: nn.Module, example: torch.Tensor, kinds: tuple[type, ...] = PRUNABLE) -> nn.Module:
    """The last layer of ``kinds`` that ``model``'s forward pass calls on ``example``: the one producing its output.

    Definition order is no guide: a module may define its head before its body.
    """
    called: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda module, args, out: called.append(module))
               for m in model.modules() if isinstance(m, kinds)]
    try:
        with _evaluating(model):
            _probe(model, example)
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        what = " or ".join(kind.__name__ for kind in kinds)
        raise SlimlensError(f"{type(model).__name__} calls no {what} layer on its input")
    return called[-1]


def check_output_shape(model: nn.Module, example: torch.Tensor, expected: tuple[int, ...], what: str, fix: str) -> None:
    """Raise a one-line SlimlensError if ``what`` (a step) changed the shape of ``model``'s output from ``expected``."""
    try:
        shape = output_shape(model, example)
    except SlimlensError as exc:  # e.g. a layer reading a recurrent layer's final state, which Torch-Pruning did not narrow with it
        raise SlimlensError(f"{what} left {exc}; {fix}") from None
    if shape != expected:
        raise SlimlensError(f"{what} changed the output shape of {type(model).__name__} from {expected} to {shape}; {fix}")


def _teacher(model: nn.Module, data: CompressionData, original: nn.Module | None) -> nn.Module | None:
    """A generator or discriminator has no labels: it fine-tunes to match the original (the recipe's first model when chained)."""
    return (original if original is not None else model).eval() if data.matches_original else None


# ---------------------------------------------------------------- structured (channel) pruning


class _RecurrentPruner(LSTMPruner):
    """Removes a hidden unit from every gate and layer of an LSTM, GRU or RNN (Torch-Pruning 1.6's LSTM pruner slices weight_hh by the wrong rows)."""

    # Torch-Pruning ranks the units by the layers around this one only: its magnitude importance has no
    # branch for a customized pruner, so the gate weights themselves do not count.

    def prune_out_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
        # nn.LSTM holds one hidden size for all its layers, so the same units go from each; layer k > 0
        # reads layer k - 1's units, so its input columns go too.
        drop = {int(i) for i in idxs}
        keep = torch.tensor([i for i in range(layer.hidden_size) if i not in drop])
        blocks = layer.weight_hh_l0.shape[0] // layer.hidden_size  # gate blocks stacked by rows: LSTM i,f,g,o; GRU r,z,n; RNN one
        gates = torch.cat([keep + g * layer.hidden_size for g in range(blocks)])
        for k in range(layer.num_layers):
            for suffix in [""] + (["_reverse"] if layer.bidirectional else []):
                edits = [("weight_ih", 0, gates), ("weight_hh", 0, gates), ("weight_hh", 1, keep), ("bias_ih", 0, gates), ("bias_hh", 0, gates)]
                if k > 0:
                    edits.append(("weight_ih", 1, keep))
                for attr, dim, index in edits:
                    name = f"{attr}_l{k}{suffix}"
                    if getattr(layer, name, None) is not None:
                        setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), index, dim))
        layer.hidden_size = len(keep)
        return layer


def recurrent_pruners(model: nn.Module) -> dict[type, _RecurrentPruner]:
    """Torch-Pruning ``customized_pruners`` for every recurrent layer type in ``model`` (it knows only LSTM, and slices that wrongly)."""
    # keyed by each layer's own type, since Torch-Pruning matches types exactly: a subclass of nn.LSTM would
    # otherwise fall to its LSTM pruner (per-layer keys fail in Torch-Pruning 1.6.0)
    pruner = _RecurrentPruner()
    return {type(m): pruner for m in model.modules() if isinstance(m, nn.RNNBase)}


class _Join(torch.autograd.Function):
    """``value`` as one autograd node whose inputs are ``sources``: what Torch-Pruning's trace follows."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
        ctx.count = len(sources)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return (grad, *[None] * ctx.count)


@contextmanager
def traceable_recurrent(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with each GRU and RNN computing its outputs as one autograd node while Torch-Pruning traces it.

    On the CPU, PyTorch runs an LSTM as one fused kernel (one node between its input and output) but a
    GRU or RNN step by step, and Torch-Pruning's trace then wanders through hundreds of small
    operations and fails (IndexError) whenever a layer feeds the GRU. Joined into one node, they trace
    as the LSTM does; the outputs themselves are the layer's own.
    """
    patched = [layer for layer in model.modules() if isinstance(layer, nn.GRU | nn.RNN)]
    own = {layer: layer.__dict__["forward"] for layer in patched if "forward" in layer.__dict__}  # a forward set on the instance
    for layer in patched:
        call = layer.forward  # the layer's own forward, a subclass's included

        def forward(*args: Any, _call: Callable = call, _layer: nn.RNNBase = layer, **kwargs: Any) -> Any:
            input = args[0] if args else kwargs.get("input")
            states = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, torch.Tensor)]
            if not isinstance(input, torch.Tensor) or any(a.requires_grad for a in states):
                return _call(*args, **kwargs)  # a packed sequence, or a state another layer computes: traced as it is
            with torch.no_grad():
                result = _call(*args, **kwargs)
            if isinstance(result, torch.Tensor):
                return _Join.apply(result, input, *_layer.parameters())
            if isinstance(result, tuple) and result and isinstance(result[0], torch.Tensor):
                return (_Join.apply(result[0], input, *_layer.parameters()), *result[1:])
            return _call(*args, **kwargs)
        layer.forward = forward
    try:
        yield model
    finally:
        for layer in patched:
            if layer in own:
                layer.forward = own[layer]
            else:
                del layer.forward


# Layers a Torch-Pruning group may start from; its default list has the LSTM but no GRU or RNN, whose
# hidden units would then never be offered for removal.
ROOT_TYPES = [nn.modules.conv._ConvNd, nn.Linear, nn.RNNBase]


def channel_pruner(model: nn.Module, example: torch.Tensor, importance: tp.importance.Importance, ratio: float,
                   head: nn.Module, **options: Any) -> tp.pruner.BasePruner:
    """Torch-Pruning's pruner for ``model`` (``head`` kept whole), its recurrent layers traced and pruned as this module does."""
    with traceable_recurrent(model):
        return tp.pruner.BasePruner(model, example, importance=importance, pruning_ratio=ratio, ignored_layers=[head],
                                    customized_pruners=recurrent_pruners(model), root_module_types=ROOT_TYPES, **options)


@dataclass(frozen=True)
class PruneStructuredConfig:
    """Remove whole channels (and LSTM/GRU hidden units) with Torch-Pruning's dependency graph, fine-tuning between rounds."""

    ratio: float = 0.5  # fraction of channels removed from every prunable group (0.5 → about 4x fewer MACs in convs)
    steps: int = 3  # prune → fine-tune rounds; the ratio rises linearly over them
    epochs: float = 2.0  # fine-tuning epochs in total, split evenly over the rounds
    lr: float = 1e-3
    importance: str = "l2"  # group magnitude norm: "l1" or "l2"
    global_pruning: bool = False  # rank channels across layers instead of the same ratio per layer
    round_to: int | None = None  # keep channel counts at the nearest multiple of this (SIMD-friendly widths)
    # fraction removed from channels shared across a residual add, capped at `ratio`; None: the same as
    # `ratio`. Every such channel feeds several layers and carries the skip signal, so ResNets keep more.
    residual_ratio: float | None = None

    strength_field: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        _check_fraction("ratio", self.ratio)
        if self.residual_ratio is not None:
            _check_fraction("residual_ratio", self.residual_ratio)
        if not self.steps >= 1:
            raise SlimlensError(f"steps={self.steps} must be at least 1")
        check_budget(self.epochs, self.lr)
        if self.importance not in ("l1", "l2"):
            raise SlimlensError(f"importance={self.importance!r} is unknown; use 'l1' or 'l2'")
        if self.round_to is not None and not self.round_to >= 1:
            raise SlimlensError(f"round_to={self.round_to} must be a positive channel count, e.g. round_to=8")
        if (self.round_to is not None or self.residual_ratio is not None) and self.global_pruning:
            raise SlimlensError("round_to and residual_ratio fix every layer's width, global_pruning ranks channels "
                                "across layers: choose one")


def residual_layers(model: nn.Module, example: torch.Tensor, skip: nn.Module) -> set[nn.Module]:
    """Layers whose output channels are tied to another layer's by an elementwise add (a residual stream)."""
    with traceable_recurrent(model):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, customized_pruners=recurrent_pruners(model))
    coupled: set[nn.Module] = set()
    for group in graph.get_all_groups(ignored_layers=[skip], root_module_types=PRUNABLE):
        producers = {item.dep.target.module for item in group
                     if isinstance(item.dep.target.module, PRUNABLE) and graph.is_out_channel_pruning_fn(item.dep.handler)}
        if len(producers) > 1:
            coupled |= producers
    return coupled


def layer_ratios(model: nn.Module, ratio: float, skip: nn.Module, round_to: int | None = None,
                 residual: set[nn.Module] = frozenset(), residual_ratio: float | None = None) -> dict[nn.Module, float]:
    """The pruning ratio of every prunable layer: ``min(residual_ratio, ratio)`` on residual streams, ``ratio`` elsewhere, widths rounded.

    With ``round_to`` each layer keeps the multiple of ``round_to`` nearest to its target width.
    Torch-Pruning's own ``round_to`` rounds the kept channels down, so 32 channels at ratio 0.6
    keep 8 rather than 16. Int8 and fp32 convolution kernels run much faster on widths that fill
    their SIMD lanes (on this AVX2 CPU a ResNet at 16-24-48 channels ran int8 about 1.8x faster
    than one at 12-25-51), so the nearest multiple is what a deployment wants. Coupled layers share
    a width and a kind, hence a ratio, so the dependency groups stay consistent.
    """
    ratios: dict[nn.Module, float] = {}
    for module in model.modules():
        if module is skip or not isinstance(module, PRUNABLE):
            continue
        # residual streams are cut less, never more: a search that tries a gentler ratio lowers them too
        target = min(residual_ratio, ratio) if (module in residual and residual_ratio is not None) else ratio
        if round_to is None:
            ratios[module] = target
            continue
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        keep = min(channels, max(round_to, round_to * round(channels * (1 - target) / round_to)))
        # half a channel of slack: Torch-Pruning truncates channels * (1 - ratio) to an integer
        ratios[module] = max(0.0, 1 - (keep + 0.5) / channels)
    return ratios


def _require_hidden_layer(model: nn.Module, head: nn.Module, name: str) -> None:
    """Refuse, before any fine-tuning, a model whose only weighted layer is the output layer (kept whole)."""
    if not any(isinstance(m, (*PRUNABLE, nn.RNNBase)) and m is not head for m in model.modules()):
        raise SlimlensError(f"prune-structured found no channels to remove in {name}: its only weighted layer is "
                            "the output layer; use prune-unstructured instead")


def refuse_untraceable_recurrent(model: nn.Module, name: str, what: str = "prune-structured cannot remove hidden units from",
                                 way_out: str = "use prune-unstructured instead") -> None:
    """Refuse in one line a recurrent layer whose outputs are not its hidden units (two directions, or an LSTM projection)."""
    for layer_name, layer in model.named_modules():
        if isinstance(layer, nn.RNNBase) and (layer.bidirectional or getattr(layer, "proj_size", 0)):
            shape = "bidirectional" if layer.bidirectional else "projected"
            raise SlimlensError(f"{what} {name}'s {shape} {type(layer).__name__} {layer_name!r}: Torch-Pruning does not trace "
                                f"its outputs to its hidden units; {way_out}")


@register_step("prune-structured", PruneStructuredConfig)
def prune_structured(model: nn.Module, config: PruneStructuredConfig, data: CompressionData,
                     progress: Progress = lambda message: None, original: nn.Module | None = None) -> nn.Module:
    """A narrower dense copy of ``model``: channels removed by group magnitude, coupled layers (skips) kept consistent."""
    pruned = trainable_clone(model)
    example = data.example_input(2)
    importance = tp.importance.GroupMagnitudeImportance(p=1 if config.importance == "l1" else 2)
    head = output_layer(pruned, example)
    shape = output_shape(pruned, example)
    _require_hidden_layer(pruned, head, data.model_name)
    refuse_untraceable_recurrent(pruned, data.model_name)
    params = module_params(pruned)["params"]
    per_layer = None
    if config.round_to is not None or config.residual_ratio is not None:
        residual = residual_layers(pruned, example, head) if config.residual_ratio is not None else set()
        per_layer = layer_ratios(pruned, config.ratio, head, config.round_to, residual, config.residual_ratio)
    try:
        pruner = channel_pruner(pruned, example, importance, config.ratio, head, pruning_ratio_dict=per_layer,
                                iterative_steps=config.steps, global_pruning=config.global_pruning)
    except Exception as exc:  # Torch-Pruning raises plain errors on graphs it cannot trace
        raise SlimlensError(f"Torch-Pruning cannot trace {type(model).__name__} ({first_line(exc, 200)}); "
                            "prune it with prune-unstructured instead") from None
    teacher = _teacher(model, data, original)
    # a recurrent model that loses nothing has a head on h_n, where a higher ratio cannot help
    removed_none = SlimlensError(
        f"prune-structured removed no channels from {data.model_name} at ratio={config.ratio}; " + (
            "Torch-Pruning cannot follow a recurrent layer's final state h_n to the layer that reads it (a head on the "
            "output sequence's last step, out[:, -1], it can follow), so use prune-unstructured instead"
            if any(isinstance(m, nn.RNNBase) for m in model.modules()) else "raise ratio, or use prune-unstructured instead"))
    for step in range(config.steps):
        try:
            pruner.step()
        except Exception as exc:
            raise SlimlensError(f"Torch-Pruning failed to remove channels from {type(model).__name__} "
                                f"({first_line(exc, 200)}); prune it with prune-unstructured instead") from None
        check_output_shape(pruned, example, shape, "prune-structured", "prune it with prune-unstructured instead")
        if step == 0 and module_params(pruned)["params"] >= params and not _removes_any(model, example, config.ratio):
            raise removed_none  # before any fine-tuning: later rounds would remove nothing either
        progress(f"structured prune round {step + 1}/{config.steps}: {module_params(pruned)['params']:,} params")
        if config.epochs > 0:
            finetune(pruned, data, config.epochs / config.steps, lr=config.lr, teacher=teacher, progress=progress)
    if module_params(pruned)["params"] >= params:  # a fine-tuned copy of the same size is not a pruned variant
        raise removed_none
    return pruned.eval()


def _removes_any(model: nn.Module, example: torch.Tensor, ratio: float) -> bool:
    """Whether one Torch-Pruning step at ``ratio`` removes anything from a copy of ``model`` (the first of several rounds may not)."""
    probe = trainable_clone(model)
    try:
        channel_pruner(probe, example, tp.importance.GroupMagnitudeImportance(p=2), ratio, output_layer(probe, example)).step()
    except Exception:  # the caller's own pruner already traced this graph; a probe that fails proves nothing
        return True
    return module_params(probe)["params"] < module_params(model)["params"]


# ---------------------------------------------------------------- unstructured (magnitude) pruning


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every weight matrix magnitude pruning may zero: Conv/Linear/Embedding weights, LSTM/GRU/RNN weights."""
    found: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        if isinstance(module, MAGNITUDE_PRUNABLE):
            found.append((module, "weight"))
        elif isinstance(module, nn.RNNBase):
            found += [(module, name) for name, _ in module.named_parameters(recurse=False) if name.startswith("weight")]
    return found


def dense_weights_left(model: nn.Module) -> list[tuple[str, str, int]]:
    """(parameter name, layer type, element count) of every weight of 2 or more dimensions that prunable_weights leaves out."""
    covered = {id(getattr(module, name)) for module, name in prunable_weights(model)}
    left = []
    for owner_name, owner in model.named_modules():
        for name, param in owner.named_parameters(recurse=False):
            if param.dim() >= 2 and id(param) not in covered:
                left.append((f"{owner_name}.{name}" if owner_name else name, type(owner).__name__, param.numel()))
    return left


def dense_weights_warning(model: nn.Module) -> str | None:
    """One line naming the weights magnitude pruning and weight sharing cannot reach in ``model``, or None when there are none."""
    left = dense_weights_left(model)
    if not left:
        return None
    count, total = sum(n for _, _, n in left), sum(p.numel() for p in model.parameters())
    named = ", ".join(f"{name} ({kind})" for name, kind, _ in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
    return (f"{len(left)} weight tensor(s) in layers this step cannot treat stay dense and unshared ({count:,} parameters, "
            f"{count / total:.0%} of the model): {named}; only Conv, Linear, Embedding and LSTM/GRU/RNN weights are pruned and shared")


def cubic_sparsity(step: int, total: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): sparsity rises fast, then slowly, reaching ``final`` at ``step == total``."""
    if total <= 0 or step >= total:
        return final
    return final + (initial - final) * (1 - step / total) ** 3


@dataclass(frozen=True)
class PruneUnstructuredConfig:
    """Zero the smallest weights on a cubic schedule during fine-tuning; pruned weights stay zero."""

    sparsity: float = 0.9  # fraction of the prunable weights that end at zero
    epochs: float = 3.0  # fine-tuning epochs in total
    ramp: float = 0.6  # share of fine-tuning over which sparsity rises; the rest recovers at full sparsity
    prune_every: int = 10  # optimiser steps between mask updates on the ramp
    lr: float = 1e-3
    scope: str = "global"  # "global": one magnitude threshold across layers; "layer": every layer to `sparsity`
    layer_sparsity: tuple[tuple[str, float], ...] = ()  # per-layer targets by module name (Han et al.), overriding scope
    distill: float = 0.0  # weight of the original model's (softened) outputs in the loss (0: the task loss only)

    strength_field: ClassVar[str] = "sparsity"

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.sparsity)
        for name, value in self.layer_sparsity:
            _check_fraction(f"layer_sparsity[{name}]", value)
        named = [name for name, _ in self.layer_sparsity]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:  # the last would silently win
            raise SlimlensError(f"layer_sparsity gives {', '.join(twice)} more than once; give each layer one sparsity")
        if self.scope not in ("global", "layer"):
            raise SlimlensError(f"scope={self.scope!r} is unknown; use 'global' or 'layer'")
        if not 0.0 < self.ramp <= 1.0:
            raise SlimlensError(f"ramp={self.ramp} must be in (0, 1]")
        if not 0.0 <= self.distill <= 1.0:
            raise SlimlensError(f"distill={self.distill} must be in [0, 1]")
        if not self.prune_every >= 1:
            raise SlimlensError(f"prune_every={self.prune_every} must be at least 1 optimiser step, e.g. prune_every=10")
        check_budget(self.epochs, self.lr)


class _Masks:
    """Magnitude masks on the prunable weights, held by torch.nn.utils.prune so gradients of pruned weights are zero."""

    def __init__(self, model: nn.Module, config: PruneUnstructuredConfig):
        names = {module: name for name, module in model.named_modules()}
        overrides = dict(config.layer_sparsity)
        self.targets = prunable_weights(model)
        prunable = {names[m] for m, _ in self.targets}
        # a pooling layer or a container would pass a plain name check and then be silently ignored
        unknown = set(overrides) - prunable
        if unknown:
            raise SlimlensError(f"layer_sparsity names {sorted(unknown)}, not prunable layers of this model; "
                                f"prunable layers: {sorted(prunable)}")
        self.config = config
        # each overridden layer's own final sparsity: it follows the schedule even where config.sparsity is 0
        self.final = {(m, p): overrides.get(names[m]) for m, p in self.targets}
        for module, pname in self.targets:
            torch_prune.identity(module, pname)

    def _weight(self, module: nn.Module, pname: str) -> torch.Tensor:
        return getattr(module, pname + "_orig").detach() * getattr(module, pname + "_mask")

    def update(self, progress: float) -> None:
        """Re-mask so every layer is a fraction ``progress`` of the way to its final sparsity; zeros stay zero."""
        sparsity = progress * self.config.sparsity
        free = [(m, p) for m, p in self.targets if self.final[(m, p)] is None]
        if self.config.scope == "global" and free:
            weights = [self._weight(m, p) for m, p in free]
            keep = keep_largest(torch.cat([w.abs().flatten() for w in weights]), sparsity)
            for (m, p), part in zip(free, keep.split([w.numel() for w in weights])):
                self._set(m, p, part.view_as(getattr(m, p + "_mask")))
        else:
            for m, p in free:
                self._set_fraction(m, p, sparsity)
        for (m, p), final in self.final.items():
            if final is not None:
                self._set_fraction(m, p, progress * final)

    def _set_fraction(self, module: nn.Module, pname: str, sparsity: float) -> None:
        magnitudes = self._weight(module, pname).abs()
        self._set(module, pname, keep_largest(magnitudes.flatten(), sparsity).view_as(magnitudes))

    @staticmethod
    def _set(module: nn.Module, pname: str, keep: torch.Tensor) -> None:
        getattr(module, pname + "_mask").copy_(keep.to(getattr(module, pname + "_mask").dtype))

    def remove(self) -> None:
        """Bake the masks into the weights and drop the pruning hooks (``prune.remove``)."""
        for module, pname in self.targets:
            torch_prune.remove(module, pname)


def self_distill_loss(data: CompressionData, weight: float, temperature: float = 4.0) -> Callable[..., torch.Tensor]:
    """Task loss mixed with the soft-target loss to the unpruned model's outputs: 4,000 labels alone overfit while pruning."""

    def loss(outputs: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        soft = soft_target_loss(data, outputs, teacher_out, temperature)  # Hinton's KL, its binary form, or MSE
        return (1 - weight) * task_loss(data, outputs, inputs, labels, teacher_out) + weight * soft

    return loss


def keep_largest(magnitudes: torch.Tensor, fraction: float) -> torch.Tensor:
    """A flat mask that prunes exactly the ``fraction`` smallest of ``magnitudes`` (all of them that are already zero, at least)."""
    k = int(round(fraction * magnitudes.numel()))
    if k <= 0:
        return torch.ones_like(magnitudes, dtype=torch.bool)
    threshold = magnitudes.kthvalue(k).values
    keep = magnitudes > threshold
    # Weights that share values (weight sharing before pruning) tie at the threshold, and pruning every
    # tied one overshot: 0.45 sparsity where 0.30 was asked. Keep back as many as were pruned beyond k,
    # unless they are zeros, which stay pruned so a masked weight never grows back.
    excess = int((~keep).sum()) - k
    if excess > 0 and threshold > 0:
        tied = (magnitudes == threshold).nonzero().flatten()
        keep[tied[:excess]] = True
    return keep


@register_step("prune-unstructured", PruneUnstructuredConfig)
def prune_unstructured(model: nn.Module, config: PruneUnstructuredConfig, data: CompressionData,
                       progress: Progress = lambda message: None, original: nn.Module | None = None) -> nn.Module:
    """A copy of ``model`` with a fraction ``sparsity`` of its weights zero, fine-tuned; store it with compressed-storage."""
    pruned = plain_weights(trainable_clone(model))
    masks = _Masks(pruned, config)
    teacher, loss_fn = _teacher(model, data, original), None
    if config.distill > 0:  # every task has a soft target: class scores, a probability, or the original's output
        teacher, loss_fn = (original if original is not None else model).eval(), self_distill_loss(data, config.distill)
    total_steps = max(1, math.ceil(config.epochs * len(data.train) / BATCH_SIZE))  # as finetune counts them
    ramp_steps = max(1, int(config.ramp * total_steps))
    state = {"step": 0}

    def after_step(net: nn.Module) -> None:
        state["step"] += 1
        if state["step"] <= ramp_steps and (state["step"] % config.prune_every == 0 or state["step"] == ramp_steps):
            masks.update(cubic_sparsity(state["step"], ramp_steps, 1.0))

    if config.epochs > 0:
        finetune(pruned, data, config.epochs, lr=config.lr, teacher=teacher, loss_fn=loss_fn, after_step=after_step, progress=progress)
    masks.update(1.0)  # exact final sparsity, also when there was no fine-tuning
    masks.remove()
    counts = module_params(pruned)
    progress(f"unstructured prune: {1 - counts['nonzero_params'] / counts['params']:.1%} of all parameters zero")
    return pruned.eval()
