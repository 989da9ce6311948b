"""Attribution methods by name: Captum classes underneath, reached through ``explainer`` and ``attribute``.

Every method is a Captum class; nothing here re-implements one. What this module adds:

* a name for each method, and ``noise_tunnel:<method>`` (``smoothgrad`` for short) around any
  gradient method,
* picking what the method runs on: a gradient-free method runs on the callable as given (an ONNX
  Runtime session, an int8 module), a gradient method on the model itself, or on a variant's float
  ``stand_in`` (and says so with a :class:`StandInWarning`),
* Grad-CAM on the last convolution whose output is still a map, read after the normalisation and activation
  that follow it (modules, or functions such as ``torch.relu`` in the forward), upsampled to the input's size,
* eval mode for the call with the model's own modes restored afterwards, and cuDNN's RNN kernels
  switched off on a GPU (their backward refuses to run in eval mode),
* splitting a large batch into chunks so memory stays bounded (``batch_size``).
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from captum.attr import (
    Attribution,
    DeepLift,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerAttribution,
    LayerGradCam,
    Lime,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn
from torch.overrides import TorchFunctionMode

from explain.errors import GradientsUnavailableError, MethodNotApplicableError, UnknownMethodError
from explain.surrogate import WeightedRidge
from zoo.evaluate import eval_mode
from zoo.metrics import looks_like_probability

Model = nn.Module | Callable[[torch.Tensor], torch.Tensor]


class StandInWarning(UserWarning):
    """A gradient method ran on a variant's float stand-in rather than on the deployed variant."""


@dataclass(frozen=True)
class MethodInfo:
    """What a method is and what it needs from the model."""

    name: str
    captum: type
    gradients: bool  # needs autograd through the model
    hooks: bool = False  # needs an nn.Module to hook (DeepLift, GuidedBackprop, layer methods)
    layer: bool = False  # attributes to a layer's output (Grad-CAM), upsampled to the input afterwards
    distribution_baselines: bool = False  # baselines are a distribution, not one per sample (GradientShap)
    summary: str = ""


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("saliency", Saliency, True, summary="|d output / d pixel| (Simonyan et al., 2014)"),
        MethodInfo("input_x_gradient", InputXGradient, True, summary="pixel value x gradient"),
        MethodInfo("integrated_gradients", IntegratedGradients, True, summary="path integral of gradients from a baseline (Sundararajan et al., 2017)"),
        MethodInfo("deeplift", DeepLift, True, hooks=True, summary="rescale rule relative to a baseline (Shrikumar et al., 2017)"),
        MethodInfo("gradient_shap", GradientShap, True, distribution_baselines=True, summary="expected gradients over noisy baselines"),
        MethodInfo("guided_backprop", GuidedBackprop, True, hooks=True, summary="gradients with negative ReLU gradients zeroed (Springenberg et al., 2015)"),
        MethodInfo("gradcam", LayerGradCam, True, hooks=True, layer=True, summary="Grad-CAM on the last convolution, upsampled (Selvaraju et al., 2017)"),
        MethodInfo("occlusion", Occlusion, False, summary="output drop when a sliding window is blanked (Zeiler & Fergus, 2014)"),
        MethodInfo("feature_ablation", FeatureAblation, False, summary="output drop when each feature group is replaced by a baseline"),
        MethodInfo("lime", Lime, False, summary="local linear surrogate on random feature-group masks (Ribeiro et al., 2016)"),
        MethodInfo("kernel_shap", KernelShap, False, summary="Shapley values by a weighted linear surrogate (Lundberg & Lee, 2017)"),
    )
}
STOCHASTIC = ("lime", "kernel_shap", "gradient_shap")  # and every noise tunnel
GRADIENT_FREE = tuple(name for name, m in METHODS.items() if not m.gradients)
NOISE_TUNNEL = "noise_tunnel"
ALIASES = {"smoothgrad": "noise_tunnel:saliency", "ig": "integrated_gradients", "grad_cam": "gradcam", "shap": "kernel_shap"}
# Captum's notices about its own mechanics, not about the user's model or data.
_CAPTUM_CHATTER = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting forward, backward hooks",
    r"Setting backward hooks on ReLU",
    r"You are providing multiple inputs for Lime",
)
DEFAULT_BATCH_SIZE = 32  # samples per Captum call; IG multiplies it by n_steps internally


def available_methods() -> list[str]:
    """Every method name ``attribute`` accepts (``noise_tunnel:<gradient method>`` works for each gradient method)."""
    return [*METHODS, "smoothgrad", *(f"{NOISE_TUNNEL}:{n}" for n, m in METHODS.items() if m.gradients and not m.layer)]


@contextlib.contextmanager
def same_draws(seed: int) -> Iterator[None]:
    """Seed torch's and NumPy's generators for one attribution, restoring both after it.

    Captum draws LIME's masks and a noise tunnel's noise from torch, but GradientShap's baselines and
    interpolation points from NumPy, so seeding torch alone left two GradientShap calls on one input
    0.08 apart (seed-cnn).
    """
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def is_stochastic(method: str) -> bool:
    """Whether ``method`` draws random masks, baselines or noise, so two calls on one input differ unless seeded alike."""
    base, tunnel = parse_method(method)
    return tunnel is not None or base.name in STOCHASTIC


def parse_method(method: str) -> tuple[MethodInfo, MethodInfo | None]:
    """Split ``method`` into (base method, noise tunnel or None); raise UnknownMethodError for a bad name."""
    name = ALIASES.get(method.strip().lower(), method.strip().lower())
    tunnel = None
    if ":" in name:
        outer, _, name = name.partition(":")
        name = ALIASES.get(name, name)
        if outer not in (NOISE_TUNNEL, "smoothgrad"):
            raise UnknownMethodError(f"unknown method {method!r}; a wrapped method is written noise_tunnel:<method>")
        tunnel = MethodInfo(NOISE_TUNNEL, NoiseTunnel, True, summary="SmoothGrad: average over noisy copies (Smilkov et al., 2017)")
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; choose from {', '.join(available_methods()[:len(METHODS) + 1])} or noise_tunnel:<gradient method>")
    base = METHODS[name]
    if tunnel is not None and (not base.gradients or base.layer):
        raise MethodNotApplicableError(f"noise_tunnel wraps a pixel gradient method, not {base.name}")
    return base, tunnel


def canonical_name(method: str) -> str:
    """The name a method is recorded under: aliases resolved, e.g. ``smoothgrad`` → ``noise_tunnel:saliency``."""
    base, tunnel = parse_method(method)
    return f"{NOISE_TUNNEL}:{base.name}" if tunnel else base.name


# ---- what the method runs on -----------------------------------------------------------------------


def _is_quantized(module: nn.Module) -> bool:
    # int8 modules from torch.ao hold packed weights that autograd cannot differentiate.
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")) for m in module.modules())


def _label(model: Any) -> str:
    name, fmt = getattr(model, "name", None), getattr(model, "format", None)
    if name and fmt:
        return f"variant {name} ({fmt})"
    return f"variant {name}" if name else type(model).__name__


@dataclass(frozen=True)
class Target:
    """What a method runs on: Captum's forward function, the module (if any), and a note for the user."""

    forward: Callable[..., torch.Tensor]
    module: nn.Module | None
    note: str | None = None


def resolve(model: Model, method: str) -> Target:
    """Pick what ``method`` runs on for ``model`` (a module, a variant, or a forward callable); raise if it cannot run."""
    base, tunnel = parse_method(method)
    if not (base.gradients or tunnel):
        # Perturbation methods only call the model, so they run on the deployed form itself.
        if not callable(model):
            raise MethodNotApplicableError(f"{_label(model)} cannot be called on a batch")
        return Target(model, model if isinstance(model, nn.Module) else None)
    if isinstance(model, nn.Module) and not _is_quantized(model):
        candidate, note = model, None
    elif isinstance(getattr(model, "stand_in", None), nn.Module):
        candidate = model.stand_in
        note = f"{base.name} needs gradients, so it ran on the float stand-in of {_label(model)}, not on the deployed variant"
    elif isinstance(getattr(model, "module", None), nn.Module) and not _is_quantized(model.module):
        candidate, note = model.module, None  # a float PyTorch variant: its module is what it runs
    elif not isinstance(model, nn.Module) and callable(model) and not base.hooks and not hasattr(model, "stand_in"):
        candidate, note = model, None  # a plain Python function, maybe differentiable; checked on the first sample in attribute()
    else:
        raise GradientsUnavailableError(
            f"{base.name} needs gradients, and {_label(model)} has none and no float stand-in; "
            f"use a gradient-free method ({', '.join(GRADIENT_FREE)}) or pass the float model"
        )
    if base.hooks and not isinstance(candidate, nn.Module):
        raise MethodNotApplicableError(f"{base.name} hooks into the model's layers and needs a torch.nn.Module, not {_label(model)}")
    return Target(candidate, candidate if isinstance(candidate, nn.Module) else None, note)


def conv_layers(module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every 2-D convolution of ``module`` in registration order, with its qualified name."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


# Layers that only normalise or rectify a convolution's map in place of it, channel for channel: Grad-CAM
# reads the map after them, as a network's own next layer does (before a BatchNorm, each channel carries the
# constant that BatchNorm removes, which swamped dcgan-d's maps until ReLU zeroed every one of them).
_MAP_FOLLOWERS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU,
                  nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.PReLU)


def last_conv_layer(module: nn.Module, sample: torch.Tensor | None = None) -> nn.Module:
    """Grad-CAM's usual layer: the last convolution whose output on ``sample`` is still a map (more than 1x1),
    taken after the BatchNorm and activation that directly follow it (each called once, not in place), and
    then as the output of the block that holds it where that block adds more to the same map (a residual block)."""
    convs = conv_layers(module)
    if not convs:
        raise MethodNotApplicableError(f"gradcam needs a convolutional layer, and {type(module).__name__} has none; try integrated_gradients or occlusion")
    if sample is None:
        return convs[-1][1]
    outputs: dict[nn.Module, Any] = {}
    calls: dict[nn.Module, int] = {}
    spans: dict[nn.Module, tuple[int, int]] = {}  # when each module's call began and ended, to tell which calls hold which
    clock = itertools.count()
    order: list[nn.Module] = []  # leaf modules in the order the forward pass calls them

    def entered(mod: nn.Module, _inputs: Any) -> None:
        spans[mod] = (next(clock), -1)

    def seen(mod: nn.Module, _inputs: Any, out: Any) -> None:
        calls[mod] = calls.get(mod, 0) + 1
        spans[mod] = (spans[mod][0], next(clock))
        # a copy, because the forward may change it in place afterwards (a BasicBlock adds its skip path with +=)
        outputs[mod] = out.clone() if isinstance(out, torch.Tensor) else out
        if not list(mod.children()):
            order.append(mod)

    children = [m for m in module.modules() if m is not module]
    handles = [m.register_forward_pre_hook(entered) for m in children] + [m.register_forward_hook(seen) for m in children]
    try:
        with torch.no_grad(), eval_mode(module):
            module(sample[:1])
    finally:
        for h in handles:
            h.remove()

    def map_size(mod: nn.Module) -> int:
        out = outputs.get(mod)
        return out.shape[-1] * out.shape[-2] if isinstance(out, torch.Tensor) and out.dim() == 4 else 0

    maps = [m for _, m in convs if map_size(m) > 1]
    layer = maps[-1] if maps else convs[-1][1]
    if order.count(layer) != 1:
        return layer
    for follower in order[order.index(layer) + 1:]:
        in_place = getattr(follower, "inplace", False)  # a hook on an in-place op's output breaks autograd
        if not isinstance(follower, _MAP_FOLLOWERS) or in_place or order.count(follower) != 1:
            break
        layer = follower
    return _enclosing_block(module, layer, outputs, calls, spans)


def _enclosing_block(module: nn.Module, layer: nn.Module, outputs: dict[nn.Module, Any], calls: dict[nn.Module, int],
                     spans: dict[nn.Module, tuple[int, int]]) -> nn.Module:
    """The outermost block whose call holds ``layer``'s (below ``module`` itself) and whose output is a new map of the same shape,
    e.g. a residual block's sum after its ReLU, as pytorch-grad-cam reads ``layer4[-1]`` of a ResNet; else ``layer``.

    Read at a residual block's last BatchNorm, the map left out the skip path the next layer also reads.
    A container that only passes the map on (a Sequential ending in the layer) keeps the layer's own name.
    The block's output is compared by value, since a block may write its sum into the layer's own tensor.
    """
    name = next(n for n, m in module.named_modules() if m is layer)
    best, current = layer, outputs.get(layer)
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        parent = module.get_submodule(".".join(parts[:depth]))
        out = outputs.get(parent)
        if calls.get(parent) != 1 or not isinstance(out, torch.Tensor) or not isinstance(current, torch.Tensor) or out.shape != current.shape:
            break
        # registered under it but called by someone else after it returned: its output comes before the layer's
        if not spans[parent][0] < spans[layer][0] < spans[layer][1] < spans[parent][1]:
            break
        if not torch.equal(out, current):
            best, current = parent, out
    return best


# Elementwise activations a forward may apply to a map as a function (torch.relu(h), F.leaky_relu(h, 0.2, True),
# h.clamp(min=0)) or as an in-place module, where the layer search cannot take their output as a layer.
_ACTIVATION_NAMES = frozenset({
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu", "silu",
    "mish", "hardswish", "hardtanh", "hardtanh_", "prelu", "rrelu", "rrelu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "softplus", "hardsigmoid", "clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_", "threshold", "threshold_",
})


# What a forward does to add a skip path (or a bias) to a map: the sum, not the branch, is what the next layer reads
_ADD_NAMES = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})


class _ReadAfterActivation(TorchFunctionMode):
    """While active, the map the network goes on with after ``layer`` is passed through ``tap``.

    Grad-CAM then hooks ``tap`` and reads that map: after the activation a forward applies to the layer's
    output as a function or in place, and after a residual add written in the forward (``F.relu(x +
    self.bn(self.conv(x)))``), whose sum the next layer reads where the layer holds only the branch. The
    first torch operation on the map decides: an add of the same shape is followed and the next operation
    decides again; an activation is tapped; anything else (a pool, a flatten) reads the sum, if an add was
    followed, and leaves the layer's own map otherwise.
    """

    def __init__(self, layer: nn.Module, tap: nn.Module):
        super().__init__()
        self.layer, self.tap = layer, tap
        self.watched: torch.Tensor | None = None
        self.steps: list[str] = []  # the operations followed and tapped after the layer, once the tap was used
        self.followed: list[str] = []  # adds followed so far, not yet tapped
        self.calls = 0  # of the layer: a layer called twice has no one map to read

    @property
    def applied(self) -> str | None:
        """The operations applied to the layer's output before the tapped map ("add, relu"), or None when the layer is read as it is."""
        return ", ".join(self.steps) or None

    def __enter__(self) -> "_ReadAfterActivation":
        self._handle = self.layer.register_forward_hook(self._watch)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        super().__exit__(*exc)

    def _watch(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.calls += 1
        self.watched = output if isinstance(output, torch.Tensor) else None
        self.followed = []

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside this call, so nothing here is intercepted again
        watched = self.watched
        operands = args[:2]
        if watched is None or not isinstance(out, torch.Tensor) or not any(a is watched for a in operands):
            return out  # not the map, or only a look at it (h.shape, h.size(0))
        name = getattr(func, "__name__", "")
        if name in _ADD_NAMES and out.shape == watched.shape:
            self.watched = out
            self.followed.append("add")
            return out
        self.watched = None
        if name in _ACTIVATION_NAMES and args[0] is watched and out.shape == watched.shape:
            self.steps = [*self.followed, name]
            return self.tap(out)
        if self.followed:  # the sum goes straight on (to a pool): run this operation again on the tapped sum
            self.steps = list(self.followed)
            tapped = self.tap(watched)
            return func(*(tapped if a is watched else a for a in args), **kwargs)
        return out


def _activation_after(module: nn.Module, layer: nn.Module, sample: torch.Tensor) -> str | None:
    """What ``module``'s forward applies to ``layer``'s output before the map its next layer reads ("relu", "add, relu"), where no
    module of it holds that map; else None."""
    reading = _ReadAfterActivation(layer, nn.Identity())
    with torch.no_grad(), eval_mode(module), reading:
        module(sample[:1])
    return reading.applied if reading.calls == 1 else None


def gradcam_layer_record(module: nn.Module, sample: torch.Tensor) -> dict[str, str]:
    """Where Grad-CAM reads ``module``'s map on ``sample``, for explain.json: ``layer`` (its name) and, where the forward
    activates that layer's output with a function or an in-place module, ``read_after`` (saying so).

    Example::

        >>> import zoo, explain
        >>> x = zoo.dataset("mnist", "test").images[:1]
        >>> explain.methods.gradcam_layer_record(zoo.load("seed-cnn"), x)
        {'layer': 'features.8'}
    """
    layer = last_conv_layer(module, sample)
    name = next(n for n, m in module.named_modules() if m is layer)
    record = {"layer": name}
    applied = _activation_after(module, layer, sample)
    if applied and applied.startswith("add"):
        record["read_after"] = (f"{applied}: the forward adds {name}'s output to another map (a skip path){' and activates the sum' if ',' in applied else ''} "
                                "as functions, so no layer holds the map the next layer reads; Grad-CAM reads it after them")
    elif applied:
        record["read_after"] = (f"{applied}: the forward applies it to {name}'s output as a function or in place, so no layer holds "
                                "the activated map; Grad-CAM reads it after the activation, the map the next layer reads")
    return record


@contextlib.contextmanager
def _rnn_guard(module: nn.Module | None) -> Iterator[None]:
    # cuDNN's RNN backward only runs in training mode; off cuDNN the eval-mode backward is fine.
    on_cuda = module is not None and any(p.is_cuda for p in module.parameters())
    has_rnn = module is not None and any(isinstance(m, nn.RNNBase) for m in module.modules())
    if on_cuda and has_rnn:
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


# ---- the Captum object -----------------------------------------------------------------------------


def explainer(model: Model, method: str = "integrated_gradients", *, layer: nn.Module | None = None) -> Attribution:
    """The Captum attribution object for ``method`` on ``model``, ready for its own ``.attribute``.

    Args:
        model: an ``nn.Module``, a variant (callable, maybe with a float ``.stand_in``) or a forward function.
        method: a name from :func:`available_methods`.
        layer: for ``gradcam``, the layer to explain (default: the last convolution).

    Example::

        >>> import zoo, explain
        >>> ig = explain.explainer(zoo.load("seed-cnn"), "integrated_gradients")
        >>> type(ig).__name__
        'IntegratedGradients'
    """
    base, tunnel = parse_method(method)
    target = resolve(model, method)
    return _build(base, tunnel, target, layer)


def _build(base: MethodInfo, tunnel: MethodInfo | None, target: Target, layer: nn.Module | None) -> Attribution:
    forward = target.forward
    if base.layer:
        module = target.module
        return LayerGradCam(forward, layer if layer is not None else last_conv_layer(module))
    if base.hooks:
        inner = base.captum(target.module)
    elif base.name == "lime":
        # scikit-learn (Captum's default surrogate) is not a slimlens dependency; see explain/surrogate.py.
        inner = Lime(forward, interpretable_model=WeightedRidge())
    elif base.name == "kernel_shap":
        inner = KernelShap(forward)
        inner.interpretable_model = WeightedRidge(alpha=0.0)  # KernelShap's own choice is unregularised regression
    else:
        inner = base.captum(forward)
    return NoiseTunnel(inner) if tunnel else inner


# ---- attribute -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq would compare tensors
class BinaryTarget:
    """Per-sample class of a one-output model: 1 explains the output itself, 0 the other class (the output negated).

    A one-output binary model (a logit, or the probability ``p`` of the positive class) has only
    Captum's index 0, the positive class's score; where it predicts the negative class, "explain
    the prediction" means explaining the negative class's score, ``-logit`` or ``1 - p``. Methods run
    on the two-column view ``[-logit, logit]`` (``[1 - p, p]``) with ``classes`` as Captum's target,
    so evidence for the predicted class is positive whichever class that is.

    Example::

        >>> import torch, zoo, explain
        >>> model = zoo.load("simplenet")   # P(digit >= 5)
        >>> x = zoo.dataset("mnist-ge5", "test").images[:2]
        >>> target = explain.BinaryTarget((model(x)[:, 0] >= 0.5).long(), probability=True)
        >>> explain.attribute(model, x, target, "saliency").shape
        torch.Size([2, 1, 28, 28])
    """

    classes: torch.Tensor  # (N,) 0 or 1
    probability: bool = False  # the output is P(class 1), so class 0 scores 1 - p; else a logit, class 0 scores -logit

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: Any) -> "BinaryTarget":
        return BinaryTarget(self.classes[index].reshape(-1), self.probability)

    def view(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``forward`` as two outputs, one score per class; a module stays a module (hook-based methods need one)."""
        return _TwoClassView(forward, self.probability)


class _TwoClassView(nn.Module):
    """A one-output model seen as [score of class 0, score of class 1]: ``[-z, z]`` for a logit, ``[1 - p, p]`` for a probability."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], probability: bool):
        super().__init__()
        # a module registers as a child, so hooks, eval mode and Grad-CAM's layer search reach into it
        self.inner = forward
        self.probability = probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x).reshape(len(x), 1)
        return torch.cat([1 - out if self.probability else -out, out], dim=1)


def predicted_target(forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor | BinaryTarget | None:
    """The target a caller means by "explain the prediction": the arg-max class, the predicted class of one output, None for a scalar.

    One output is read as a probability when every value lies in [0, 1] (threshold 0.5), else as a logit
    (threshold 0); a caller who knows which it is passes a :class:`BinaryTarget` instead.
    """
    with torch.no_grad():
        outs = [forward(chunk) for chunk in inputs.split(batch_size)]
    out = torch.cat(outs)
    if out.dim() >= 2 and out.shape[1] > 1:
        return out.reshape(len(out), -1).argmax(1) if out.dim() == 2 else None
    if out.dim() < 2 or out[0].numel() != 1:
        return None
    score = out.reshape(len(out)).float()
    probability = looks_like_probability(score)
    return BinaryTarget((score >= (0.5 if probability else 0.0)).long(), probability)


def _check_differentiable(forward: Callable, inputs: torch.Tensor, name: str) -> None:
    probe = inputs[:1].detach().clone().requires_grad_(True)
    try:
        out = forward(probe)
    except Exception as exc:  # a forward that fails on a tensor needing grad (e.g. it calls .numpy())
        raise GradientsUnavailableError(f"{name} needs gradients, but the forward function cannot be differentiated ({str(exc).splitlines()[0]}); use a gradient-free method ({', '.join(GRADIENT_FREE)})") from None
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        raise GradientsUnavailableError(f"{name} needs gradients, but the forward function's output carries none; use a gradient-free method ({', '.join(GRADIENT_FREE)})")


def _chunk_arg(value: Any, n: int, start: int, stop: int, per_sample: bool) -> Any:
    """The slice of a per-sample argument for samples [start, stop); shared arguments pass through whole."""
    if not per_sample:
        return value
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n and n > 1:
        return value[start:stop]
    if isinstance(value, list) and len(value) == n and n > 1:
        return value[start:stop]
    return value


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], tuple):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(parts[0])))
    if isinstance(parts[0], torch.Tensor):
        return parts[0] if len(parts) == 1 else torch.cat([p.reshape(p.shape if p.dim() else (1,)) for p in parts])
    return parts


def attribute(
    model: Model,
    inputs: torch.Tensor,
    target: int | torch.Tensor | list[int] | None = None,
    method: str = "integrated_gradients",
    *,
    layer: nn.Module | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    interpolate_mode: str = "bilinear",
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attributions of ``model``'s output for ``target`` to each element of ``inputs`` by ``method``.

    ``options`` go unchanged to the Captum method's ``.attribute``, so with none the result equals
    the Captum class called directly with Captum's defaults. Where Captum has no default for an
    argument it requires (Occlusion's window, GradientShap's baselines), the 28x28 defaults of
    :func:`explain.defaults.default_options` fill it in.

    Args:
        model: an ``nn.Module``; a variant (callable batch → outputs, maybe with a float
            ``.stand_in`` for gradient methods); or any forward function.
        inputs: a batch, e.g. (N, 1, 28, 28) pixels in [0, 1].
        target: output index per sample, or a :class:`BinaryTarget` for a one-output model.
            ``None`` means the predicted class: the arg-max of several outputs, and for one
            output (a sigmoid or a logit) the output itself where it predicts the positive class
            and its negation where it predicts the other, so evidence for the prediction is positive.
        method: a name from :func:`available_methods`, e.g. ``"saliency"``, ``"occlusion"``,
            ``"gradcam"``, ``"noise_tunnel:integrated_gradients"``.
        layer: Grad-CAM's layer, read as it is (default: the last convolution whose output is still a map,
            read after the activation the forward applies to it, module or function).
            IntegratedGradients' own ``method`` argument is passed as ``captum_method``.
        batch_size: samples per Captum call, so memory stays bounded; ``None`` for one call.
        interpolate_mode: how Grad-CAM's map is upsampled to the input (Captum's ``interpolate``).

    Returns:
        A tensor shaped like ``inputs`` (and the convergence delta as well when asked for with
        ``return_convergence_delta=True``).

    Example::

        >>> import torch, zoo, explain
        >>> model = zoo.load("seed-cnn")
        >>> x = torch.stack([zoo.dataset("mnist", "test")[i][0] for i in range(4)])
        >>> explain.attribute(model, x, method="saliency").shape
        torch.Size([4, 1, 28, 28])
    """
    from explain.defaults import required_options  # the few arguments Captum itself leaves without a default

    base, tunnel = parse_method(method)
    resolved = resolve(model, method)
    if resolved.note:
        warnings.warn(resolved.note, StandInWarning, stacklevel=2)
    if (base.gradients or tunnel) and resolved.module is None:
        _check_differentiable(resolved.forward, inputs, base.name)
    options = {**required_options(base.name, tuple(inputs.shape[1:])), **options}
    if "captum_method" in options:  # IntegratedGradients' own `method` (riemann_trapezoid, ...) under another name
        options["method"] = options.pop("captum_method")
    with eval_mode(resolved.module), _rnn_guard(resolved.module), warnings.catch_warnings():
        for message in _CAPTUM_CHATTER:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        if target is None:
            target = predicted_target(resolved.forward, inputs)
        if isinstance(target, BinaryTarget):  # the predicted class of one output: a column of its two-class view
            view = target.view(resolved.forward)
            resolved = Target(view, view if resolved.module is not None else None, resolved.note)
            target = target.classes
        reading: contextlib.AbstractContextManager = contextlib.nullcontext()
        if base.layer and layer is None:
            layer = last_conv_layer(resolved.module, inputs)
            if _activation_after(resolved.module, layer, inputs):
                # negatives a functional ReLU clips would otherwise count: read the activated map through a tap
                reading = _ReadAfterActivation(layer, nn.Identity())
                layer = reading.tap
        captum = _build(base, tunnel, resolved, layer)
        if tunnel is not None:
            options.setdefault("nt_type", "smoothgrad")
        n = len(inputs)
        step = n if not batch_size or batch_size >= n else batch_size
        parts = []
        per_sample_baselines = not base.distribution_baselines
        for start in range(0, n, step):
            stop = min(n, start + step)
            chunk_options = {
                key: _chunk_arg(value, n, start, stop, per_sample=(key != "baselines" or per_sample_baselines) and key in ("baselines", "feature_mask", "additional_forward_args"))
                for key, value in options.items()
            }
            try:
                with reading:
                    result = captum.attribute(inputs[start:stop], target=_chunk_arg(target, n, start, stop, True), **chunk_options)
            except RuntimeError as exc:
                if base.name == "deeplift" and "used more than once" in str(exc):
                    raise MethodNotApplicableError(
                        f"deeplift needs every activation module to be used once, and {type(resolved.module).__name__} reuses one "
                        "(torchvision's BasicBlock calls self.relu twice); use integrated_gradients or gradient_shap"
                    ) from None
                raise
            parts.append(result)
    result = _concat(parts)
    if base.layer:
        upsample = lambda a: LayerAttribution.interpolate(a, tuple(inputs.shape[-2:]), interpolate_mode=interpolate_mode)  # noqa: E731
        result = (upsample(result[0]), result[1]) if isinstance(result, tuple) else upsample(result)
    return result
