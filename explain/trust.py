"""How far a map can be trusted: faithfulness curves, Captum's infidelity and sensitivity, the
model-parameter randomisation sanity check, and IntegratedGradients' completeness.

Deletion and insertion curves (Petsiuk et al., 2018) are built for a whole batch at once: every
image's pixels are ranked by attribution, and step ``s`` of the curve is one batch of perturbed
copies, so a curve of ``steps`` points costs ``steps + 1`` batched forward passes however many
images there are, not a forward pass per pixel per image.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from explain.drift import rank_correlation, ssim
from explain.methods import BinaryTarget, Model, attribute, eval_mode, is_stochastic, predicted_target, same_draws

Forward = Callable[[torch.Tensor], torch.Tensor]


def _predicted(forward: Forward, inputs: torch.Tensor) -> torch.Tensor | BinaryTarget | None:
    """The target ``explain.attribute`` defaults to: the predicted class (of one output, too)."""
    with eval_mode(forward if isinstance(forward, nn.Module) else None):
        return predicted_target(forward, inputs)


def _target_index(target: Any, n: int) -> torch.Tensor:
    if target is None:
        return torch.zeros(n, dtype=torch.long)
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    return torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(n)


def class_scores(outputs: torch.Tensor, target: torch.Tensor, output: str = "auto") -> torch.Tensor:
    """The score of ``target`` per row: softmax probability for several outputs, the raw value for one (``raw``: never transformed)."""
    out = outputs.reshape(len(outputs), -1).float()
    if output == "softmax" or (output == "auto" and out.shape[1] > 1):
        out = out.softmax(1)
    elif output == "sigmoid":
        out = out.sigmoid()
    return out.gather(1, target.reshape(-1, 1).clamp_max(out.shape[1] - 1)).squeeze(1)


def deletion_insertion(
    forward: Forward,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: int | torch.Tensor | None = None,
    *,
    steps: int = 28,
    baseline: float = 0.0,
    batch_size: int = 512,
    output: str = "auto",
) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves and their AUCs for a batch, ranking pixels by attribution (highest first).

    Deletion replaces the top-ranked fraction of pixels with ``baseline`` (a good map makes the
    target's score fall fast: low AUC); insertion starts from ``baseline`` and restores them (a good
    map makes it rise fast: high AUC). Both are integrated over the fraction 0..1 by the trapezoid
    rule. ``forward`` may be any callable, e.g. an ONNX Runtime variant. ``target`` defaults, as in
    ``explain.attribute``, to the class ``forward`` predicts for each input; for one output (a
    :class:`BinaryTarget`) the score is that class's: the output, or ``1 - p`` (``sigmoid(-logit)``
    with ``output="sigmoid"``) where the class is the negative one.

    Returns ``fractions`` (steps+1,), ``deletion`` and ``insertion`` (N, steps+1), ``deletion_auc``
    and ``insertion_auc`` (N,).
    """
    n = len(inputs)
    flat = inputs.detach().reshape(n, -1)
    d = flat.shape[1]
    module = forward if isinstance(forward, nn.Module) else None
    if target is None:
        target = _predicted(forward, inputs)
    call = forward
    if isinstance(target, BinaryTarget):
        # one output, explained for the predicted class: score that class, sigmoid(-logit) or 1 - p where it is the negative one
        call, target = target.view(forward), target.classes
        output = "sigmoid" if output == "sigmoid" else "raw"
    target = _target_index(target, n)
    # rank[b, i] = position of element i when image b's elements are sorted by attribution, highest first
    order = attributions.detach().reshape(n, -1).float().argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d).expand(n, d).contiguous())
    counts = torch.round(torch.linspace(0, d, steps + 1)).long()
    fractions = counts.float() / d
    base = torch.full_like(flat, baseline)
    curves = {}
    # a module handed over in training mode would score with dropout on and overwrite BatchNorm's running statistics
    with torch.no_grad(), eval_mode(module):
        for kind in ("deletion", "insertion"):
            scores = torch.empty(steps + 1, n)
            per_call = max(1, batch_size // n)  # whole steps per forward call, so a call holds up to batch_size images
            for first in range(0, steps + 1, per_call):
                ks = counts[first:first + per_call]
                hit = rank[None] < ks[:, None, None]  # (k, n, d): the top-ranked pixels at each step
                if kind == "deletion":
                    batch = torch.where(hit, base[None], flat[None])
                else:
                    batch = torch.where(hit, flat[None], base[None])
                out = call(batch.reshape(-1, *inputs.shape[1:]))
                scores[first:first + len(ks)] = class_scores(out, target.repeat(len(ks)), output).reshape(len(ks), n)
            curves[kind] = scores.T.contiguous()
    return {
        "fractions": fractions,
        "deletion": curves["deletion"],
        "insertion": curves["insertion"],
        "deletion_auc": torch.trapezoid(curves["deletion"], fractions, dim=1),
        "insertion_auc": torch.trapezoid(curves["insertion"], fractions, dim=1),
    }


def faithfulness_change(
    model: Forward,
    variant: Forward,
    inputs: torch.Tensor,
    original: torch.Tensor,
    changed: torch.Tensor,
    target: Any = None,
    *,
    output: str = "auto",
    of: int | None = None,
) -> dict[str, Any]:
    """Deletion and insertion AUC of the original's maps on ``model`` and of the variant's maps on ``variant``, on the
    same ``inputs``, and the change: how far compression moved the maps' faithfulness.

    ``of`` is how many inputs there were before those where either map is all zero were left out; where some
    were, ``samples`` says so, since ``original`` then need not equal the trust figure of the same method,
    which leaves out only inputs whose original map is all zero (0.3881 here against 0.3839 there, QA's
    int8 simplenet, whose feature-ablation map of one digit was all zero on the variant only).
    """
    a = deletion_insertion(model, inputs, original, target, output=output)
    b = deletion_insertion(variant, inputs, changed, target, output=output)
    result: dict[str, Any] = {
        "original": {"deletion_auc": float(a["deletion_auc"].mean()), "insertion_auc": float(a["insertion_auc"].mean())},
        "variant": {"deletion_auc": float(b["deletion_auc"].mean()), "insertion_auc": float(b["insertion_auc"].mean())},
    }
    result["change"] = {k: result["variant"][k] - result["original"][k] for k in ("deletion_auc", "insertion_auc")}
    if of is not None and of > len(inputs):
        result["samples"] = (f"the {len(inputs)} of {of} inputs where neither map is all zero: a change needs both maps of an input, so "
                             "'original' can differ from trust's figure for this method, which leaves out only inputs whose original map is all zero")
    return result


def infidelity_score(forward: Forward, inputs: torch.Tensor, attributions: torch.Tensor, target: Any = None, *, noise: float = 0.1, n_perturb_samples: int = 10, seed: int = 0) -> torch.Tensor:
    """Captum's infidelity (Yeh et al., 2019) per sample under Gaussian pixel noise of std ``noise``; lower is better.

    Attributions are rescaled optimally first (``normalize=True``), so methods with different
    units compare. ``target`` defaults to the predicted class, as in ``explain.attribute``.
    """
    if target is None:
        target = _predicted(forward, inputs)
    module = forward if isinstance(forward, nn.Module) else None
    if isinstance(target, BinaryTarget):  # the maps explain each sample's predicted class: so must the outputs they are checked against
        forward, target = target.view(forward), target.classes

    generator = torch.Generator().manual_seed(seed)

    def perturb(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = torch.randn(x.shape, generator=generator) * noise
        return delta, x - delta

    with torch.no_grad(), eval_mode(module):
        return infidelity(forward, perturb, inputs, attributions, target=target, n_perturb_samples=n_perturb_samples, normalize=True)


def sensitivity(model: Model, inputs: torch.Tensor, target: Any = None, method: str = "saliency", *, radius: float = 0.02, n_perturb_samples: int = 5, seed: int = 0, **options: Any) -> torch.Tensor:
    """Captum's sensitivity_max per sample: the largest change of the map under input noise within ``radius``; lower is steadier."""

    # Captum repeats a tensor target for the perturbed copies but not a BinaryTarget: it travels as its classes
    probability = target.probability if isinstance(target, BinaryTarget) else None
    if probability is not None:
        target = target.classes

    def one_draw(x: torch.Tensor, target: Any) -> torch.Tensor:
        if not is_stochastic(method):
            return attribute(model, x, target=target, method=method, **options)
        # Common random numbers: every sample, unperturbed or perturbed, gets the same masks or noise,
        # so the change measured is the input's, not a fresh draw's (LIME's was 1.59 at radius 0.02 and
        # 1.59 at 1e-6, seed-cnn: only its own randomness).
        maps = []
        for i in range(len(x)):
            with same_draws(seed):
                maps.append(attribute(model, x[i:i + 1], target=_row(target, i), method=method, **options))
        return torch.cat(maps)

    def explanation(x: torch.Tensor | tuple[torch.Tensor, ...], target: Any = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if probability is not None:
            target = BinaryTarget(torch.as_tensor(target).reshape(-1), probability)
        if isinstance(x, tuple):  # Captum hands perturbed inputs over as a tuple of one tensor
            return (one_draw(x[0], target),)
        return one_draw(x, target)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return sensitivity_max(explanation, inputs, perturb_radius=radius, n_perturb_samples=n_perturb_samples, target=target).detach()


def _row(target: Any, i: int) -> Any:
    """Sample ``i``'s part of a per-sample target (a tensor, a list or a BinaryTarget); a shared target as it is."""
    per_sample = isinstance(target, (BinaryTarget, list)) or (isinstance(target, torch.Tensor) and target.dim() > 0)
    return target[i:i + 1] if per_sample else target


def convergence_delta(model: Model, inputs: torch.Tensor, target: Any = None, **options: Any) -> dict[str, float]:
    """IntegratedGradients' completeness: |sum of attributions - (F(x) - F(baseline))|, absolute and relative to |F(x) - F(baseline)|."""
    attributions, delta = attribute(model, inputs, target=target, method="integrated_gradients", return_convergence_delta=True, **options)
    total = attributions.detach().reshape(len(inputs), -1).sum(1)
    gap = (total - delta.detach()).abs()  # F(x) - F(baseline), recovered from Captum's delta
    return {
        "mean_abs_delta": float(delta.abs().mean()),
        "max_abs_delta": float(delta.abs().max()),
        "mean_relative_delta": float((delta.abs() / gap.clamp_min(1e-8)).mean()),
    }


def _layers_top_down(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own weights and can re-initialise themselves, from the output layer back to the input."""
    found = [(name, m) for name, m in model.named_modules() if name and hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]
    return [(n, m) for n, m in reversed(found) if not isinstance(m, nn.modules.batchnorm._NormBase)]


def _stages(layers: list[tuple[str, nn.Module]], max_stages: int) -> list[list[tuple[str, nn.Module]]]:
    """Split the top-down layer list into at most ``max_stages`` consecutive groups, the top layer alone first."""
    if len(layers) <= max_stages:
        return [[layer] for layer in layers]
    rest = layers[1:]
    size = -(-len(rest) // (max_stages - 1))  # ceiling division
    return [[layers[0]]] + [rest[i:i + size] for i in range(0, len(rest), size)]


CHANCE_MARGIN = 0.1  # SSIM above the outline-only noise level that counts as structure the maps kept


def randomisation_test(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Any = None,
    method: str = "saliency",
    *,
    threshold: float = 0.3,
    max_stages: int = 6,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Adebayo et al. (2018) cascading model-parameter randomisation, from the top layer down.

    After each further layer is re-initialised, the map is recomputed for the same inputs and
    target and compared with the trained model's map (SSIM and Spearman rank correlation of |map|).
    A sound method's maps lose their structure as the weights go; a method whose maps keep an SSIM
    above ``threshold`` with every layer randomised is drawing the input, not the model, and is
    ``flagged`` (Adebayo et al. found Guided Backprop behaving like an edge detector this way).
    ``chance_ssim`` is what noise confined to the input's non-zero pixels scores against the trained
    map: on digits on a black background, maps that are zero off the digit (integrated gradients,
    occlusion) share its outline whatever the weights, so a final SSIM near it means the maps keep
    the input's outline rather than the model's reasoning: within ``CHANCE_MARGIN`` of it the result
    is ``inconclusive``, not flagged.
    SSIM decides rather than rank correlation because every convolutional network, trained or
    not, gives border pixels smaller gradients, which keeps rank correlations of sound methods
    high on 28x28 digits.
    Deep models are randomised in at most ``max_stages`` groups of consecutive layers (the top
    layer alone first) so the test costs a bounded number of explanations. The model itself is
    left untouched (a copy is randomised).
    """
    if target is None:
        with eval_mode(model):
            target = predicted_target(model, inputs)
    original = attribute(model, inputs, target=target, method=method, **options).detach()
    copy_ = copy.deepcopy(model)
    layers = _layers_top_down(copy_)
    names, spearman, structural = [], [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for stage in _stages(layers, max_stages):
            for _, layer in stage:
                layer.reset_parameters()
            randomised = attribute(copy_, inputs, target=target, method=method, **options).detach()
            names.append(stage[0][0] if len(stage) == 1 else f"{stage[0][0]} .. {stage[-1][0]}")
            spearman.append(float(rank_correlation(original, randomised, absolute=True).mean()))
            structural.append(float(ssim(original, randomised).mean()))
    final = structural[-1] if structural else 1.0
    # What a map with no structure but the input's shape scores: noise wherever the input has ink.
    # Maps that are zero on a blank background share that shape whatever the weights, so a final SSIM
    # near this level says the maps follow the input's outline, not that the method draws edges.
    chance = None
    if inputs.shape == original.shape:
        noise = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(seed)) * inputs.detach().ne(0)
        chance = float(ssim(original, noise).mean())
    reference = f"; noise confined to the input's non-zero pixels scores {chance:.2f}" if chance is not None else ""
    # above the threshold only by the outline that noise on the digit also shares: the test cannot tell
    inconclusive = bool(final > threshold and chance is not None and final <= chance + CHANCE_MARGIN)
    flagged = bool(final > threshold and not inconclusive)
    if flagged:
        verdict = (f"maps keep their structure (SSIM {final:.2f} > {threshold}{reference}) with every layer randomised: "
                   "the method behaves like an edge detector of the input, not an explanation of this model")
    elif inconclusive:
        verdict = (f"maps keep SSIM {final:.2f} > {threshold} with every layer randomised, but within {CHANCE_MARGIN} of what noise "
                   f"confined to the input's non-zero pixels scores ({chance:.2f}): they keep only the input's outline, which any map "
                   "that is zero off the digit shares, so the test cannot tell here")
    else:
        verdict = f"maps lose their structure as layers are randomised (SSIM {final:.2f} with all randomised{reference}): passes"
    return {
        "method": method,
        "layers": names,
        "spearman_abs": spearman,
        "ssim": structural,
        "final_ssim": final,
        "final_spearman_abs": spearman[-1] if spearman else 1.0,
        "threshold": threshold,
        "chance_ssim": chance,
        "flagged": flagged,
        "inconclusive": inconclusive,
        "verdict": verdict,
    }


def summarise(values: torch.Tensor) -> dict[str, float]:
    """Mean, median and spread of a per-sample metric, as JSON-ready floats."""
    v = values.detach().float().reshape(-1).numpy()
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan")}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std())}
