"""The ``slimlens explain`` run: check everything, compute maps, trust and drift, then write the folder at once.

Order matters for "nothing half-written": :func:`prepare` validates every argument (method names,
whether each method applies to the model and to the variant, image file, indices, output folder)
before any computation; :func:`run` then builds the whole output in a hidden temporary folder
beside ``out`` and renames it into place only when everything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import zoo
from explain import drift as drift_mod
from explain import heatmaps, trust
from explain.defaults import default_options, describe
from explain.errors import ExplainError, MethodNotApplicableError
from explain.families import code_attribution, latent_attribution
from explain.inputs import check_indices, load_image, spread_indices
from explain.methods import (METHODS, BinaryTarget, StandInWarning, attribute, canonical_name, conv_layers, gradcam_layer_record,
                             looks_like_probability, parse_method, resolve, same_draws)
from explain.user_model import user_card
from zoo.cards import usual_mode, written_by_slimlens

DEFAULT_METHODS = ("integrated_gradients", "gradcam", "occlusion")
GRADIENT_FREE_DEFAULTS = ("occlusion", "feature_ablation")
TRUST_SAMPLES = 6  # sensitivity and randomisation cost a full explanation per perturbation or layer
MAX_LATENT_SAMPLES = 1000  # a generator has no split to bound --samples: the test split's size keeps runs in minutes
LOW_AGREEMENT = 0.5  # a variant predicting otherwise on most inputs explains other decisions: its drift is warned about
GRID_MAX_ROWS = 32  # grid.png draws at most this many samples: 32 rows take ~9 s and ~1 MB, 200 rows ~1 min and 7 MB


@dataclass
class Request:
    """What a user asked ``slimlens explain`` for."""

    model: str
    out: Path
    methods: list[str] | None = None
    samples: int = 8
    indices: list[int] | None = None
    image: Path | None = None
    variant: Any = None
    variant_path: str | None = None
    trust: bool = True
    shared_scale: bool = False
    seed: int = 0
    weights_root: str | None = None
    weights: str | None = None  # the --weights file a user's network was loaded from; None: the builder's own initialisation
    module: nn.Module | None = None  # a user's own network, built from ``model`` (package.module:function) by the caller
    data: str | None = None  # the zoo dataset a user's network was trained on
    progress: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class Plan:
    """A validated request: the model, the inputs and the methods with their settings."""

    request: Request
    model: nn.Module
    card: Any
    family: str
    inputs: torch.Tensor
    labels: list[int | None]
    sources: list[str]
    notes: list[str]
    methods: list[str]
    options: dict[str, dict[str, Any]]
    partner: nn.Module | None = None  # the other half of a GAN


def _kind(card: Any) -> str:
    if card.task == "generation":
        return "generator"
    if card.task == "discrimination":
        return "discriminator"
    if card.family == "autoencoder":
        return "autoencoder"
    return "lstm" if card.family == "lstm" else "classifier"


def _check_out(out: Path) -> None:
    """Refuse an --out that the final write could not create, before any computation."""
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()) and not written_by_slimlens(out / "explain.json"):
        raise ExplainError(f"--out {out} exists and is not an explain output folder; choose a new or empty folder")
    # The output is built beside `out` and renamed into place, so its parent must exist or be creatable, and be writable.
    ancestor = out.absolute().parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExplainError(f"--out {out} cannot be created: {ancestor} is not a folder; choose an --out inside a folder you can write to")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExplainError(f"--out {out} cannot be created: no permission to write in {ancestor}; choose an --out inside a folder you can write to")


def _check_method(model: Any, method: str, kind: str, who: str) -> None:
    base, _ = parse_method(method)
    if kind == "generator" and base.layer:
        raise MethodNotApplicableError(f"{method} explains a convolution's map of an image; a generator's input is a latent vector")
    target = resolve(model, method)  # raises for a gradient method on a model without gradients or stand-in
    if base.layer:
        if not conv_layers(target.module):
            raise MethodNotApplicableError(f"gradcam needs a convolutional layer, and {who} has none; try integrated_gradients or occlusion")


def prepare(request: Request) -> Plan:
    """Validate ``request`` completely (raising ExplainError with one line) and load what it needs."""
    _check_out(Path(request.out).resolve())  # "--out ." has no name to build a folder beside
    card = _card(request)
    kind = _kind(card)
    if request.image is not None and request.indices:
        raise ExplainError("use --image or --indices, not both")
    if request.samples < 1:
        raise ExplainError(f"--samples must be at least 1, got {request.samples}")
    if request.variant is not None and kind not in ("classifier", "lstm", "discriminator"):
        raise ExplainError(f"--variant compares the maps of a classifier or discriminator, and {request.model} is a {card.task} model; "
                           f"explain it without --variant")
    if request.methods:
        methods = [canonical_name(m) for m in request.methods]
    elif request.variant is not None and not _gradients_on_deployed(request.variant):
        methods = list(GRADIENT_FREE_DEFAULTS)
    else:
        methods = [m for m in DEFAULT_METHODS if not (m == "gradcam" and (kind in ("generator", "autoencoder") or card.family not in ("cnn", "gan")))]
    methods = list(dict.fromkeys(methods))
    model = request.module if request.module is not None else zoo.load(request.model, request.weights_root)
    for method in methods:
        _check_method(model, method, kind, request.model)
        if request.variant is not None:
            _check_method(request.variant, method, kind, f"variant {getattr(request.variant, 'name', '')}".strip())
    partner = None
    notes: list[str] = []
    if kind == "generator":
        if request.image is not None or request.indices:
            raise ExplainError(f"{request.model} is a generator: it explains latent vectors, so --image and --indices do not apply")
        if request.samples > MAX_LATENT_SAMPLES:
            raise ExplainError(f"--samples {request.samples} latent vectors is more than the {MAX_LATENT_SAMPLES} a generator's explanation "
                               f"takes (as many as a classifier's test split); give at most {MAX_LATENT_SAMPLES}")
        inputs = zoo.latents(request.samples, request.seed)
        labels: list[int | None] = [None] * request.samples
        sources = [f"latent #{i}" for i in range(request.samples)]  # zoo.latents(samples, seed)
        partner = zoo.load(card.extra.get("trained_with") or "dcgan-d", request.weights_root) if _exists("dcgan-d") else None
    elif request.image is not None:
        image, notes = load_image(request.image)
        inputs, labels, sources = image[None], [None], [f"image {Path(request.image).name}"]
    else:
        data = zoo.dataset(card.dataset.get("name", "mnist"), "test")
        if not request.indices and request.samples > len(data):
            raise ExplainError(f"--samples {request.samples} is more than the {len(data):,} images in the {card.dataset.get('name', 'mnist')} test split; "
                               f"give at most {len(data)}")
        indices = check_indices(request.indices, len(data)) if request.indices else spread_indices(data.labels, request.samples)
        inputs = data.images[indices]
        labels = [int(data.labels[i]) for i in indices]
        sources = [f"test #{i}" for i in indices]
        if kind == "discriminator":  # real digits beside as many generated ones
            generator = zoo.load("dcgan-g", request.weights_root)
            with torch.no_grad():
                fakes = generator(zoo.latents(len(indices), request.seed))
            inputs = torch.cat([inputs, fakes])
            labels = [1] * len(indices) + [0] * len(indices)
            sources += [f"generated #{i}" for i in range(len(indices))]  # latents: zoo.latents(n, seed)
    _check_finite(model, inputs, request.model, sources)
    if request.variant is not None:
        _check_variant_fits(request, model, inputs)
        _check_finite(request.variant, inputs, f"variant {request.variant_path or getattr(request.variant, 'name', '')}".strip(), sources)
        _check_variant_weights(request, card)
    shape = tuple(inputs.shape[1:])
    options = {m: default_options(m, shape) for m in methods}
    return Plan(request, model, card, kind, inputs, labels, sources, notes, methods, options, partner)


def _card(request: Request) -> Any:
    """The zoo card of ``request.model``, or one built for a user's network from its dataset and outputs."""
    if request.module is None:
        if request.data is not None:
            raise ExplainError(f"--data names the dataset of your own model (package.module:function); zoo model {request.model} "
                               "knows its own, so leave --data out")
        return zoo.card(request.model, request.weights_root)
    if request.weights_root:
        raise ExplainError("--weights-root holds retrained zoo models; your own model's weights come with --weights")
    return user_card(request.model, request.data, request.module)


def _refit_advice(model: str, made_from: str | None) -> str:
    """What to do about a variant that does not fit ``model``: it names this model, so its files or code changed; else it is another model's."""
    if made_from == model:
        return (f"it was made from {model}, so its files or {model}'s code changed since, or --data names another dataset than the run's; "
                "re-run the compress command in its run's results.json")
    return "explain it beside the model it was compressed from"


def _check_variant_fits(request: Request, model: Any, inputs: torch.Tensor) -> None:
    """Refuse a variant made from another model: its maps would be compared with the wrong original."""
    variant, path = request.variant, request.variant_path or getattr(request.variant, "name", "the variant")
    source = getattr(variant, "source", None) or {}
    made_from = source.get("zoo")
    if made_from and made_from != request.model:
        raise ExplainError(f"{path} was made from {made_from}, not {request.model}; "
                           f"run `slimlens explain {made_from} --variant {path}`")
    builder = source.get("builder")
    if builder and builder != request.model:  # maps beside another model's would be drift between two models
        raise ExplainError(f"{path} was made from your model {builder}(), not {request.model}; run `slimlens explain {builder} "
                           f"--weights FILE --data DATASET --variant {path}` with the weights it was compressed from")
    # a variant that names no model at all (an ONNX file saved by hand) is judged by its outputs on this model's inputs
    probe = inputs[:2]
    try:
        with torch.no_grad():
            got, expected = variant(probe), model(probe)
    except Exception as exc:  # any failure here means it cannot take this model's inputs
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ExplainError(f"{path} cannot take {request.model}'s inputs ({reason}); {_refit_advice(request.model, made_from or builder)}") from None
    if tuple(got.shape) != tuple(expected.shape):
        raise ExplainError(f"{path} gives outputs of shape {tuple(got.shape)} where {request.model} gives {tuple(expected.shape)}; "
                           + _refit_advice(request.model, made_from or builder))
    if expected.reshape(len(probe), -1).shape[1] == 1:
        # one output: a probability read as a logit (or the reverse) predicts the wrong class and explains another function,
        # e.g. a hand-saved ONNX file of a sigmoid model beside a user's logit model (compress makes neither for it)
        with torch.no_grad():
            got, expected = variant(inputs).reshape(-1), model(inputs).reshape(-1)
        if _one_is_probability(got, expected):
            raise ExplainError(f"{path} gives {_output_words(got)} where {request.model} gives {_output_words(expected)}: one of them ends in a "
                               "sigmoid and the other does not, so their predictions and maps cannot be compared; explain it beside the model it "
                               "was compressed from")


def _one_is_probability(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether one set of one-output values reads as probabilities and the other is clearly logits (well outside [0, 1])."""
    def beyond(v: torch.Tensor) -> bool:  # far enough out that a quantized copy's error cannot put it there
        return bool(((v < -0.5) | (v > 1.5)).any())

    return (looks_like_probability(a) and beyond(b)) or (looks_like_probability(b) and beyond(a))


def _output_words(values: torch.Tensor) -> str:
    """One output's values in words for an error line: probabilities, or logits with their range."""
    if looks_like_probability(values):
        return "probabilities (all in [0, 1])"
    return f"logits (from {float(values.min()):.2f} to {float(values.max()):.2f})"


def _check_finite(forward: Any, inputs: torch.Tensor, who: str, sources: list[str]) -> None:
    """Refuse a model whose outputs on the inputs to explain hold NaN or inf: every map, trust figure and verdict would be NaN."""
    with torch.no_grad():  # in chunks: --samples may ask for a whole test split
        bad = torch.cat([(~torch.isfinite(forward(chunk).reshape(len(chunk), -1))).any(1) for chunk in inputs.split(256)])
    if bad.any():
        first = sources[int(bad.nonzero()[0])]
        raise ExplainError(f"{who} gives NaN or infinite outputs for {int(bad.sum())} of the {len(inputs)} inputs to explain ({first} first); "
                           "check its weights (a diverged training run leaves NaN in them) and explain a model whose outputs are finite")


def _check_variant_weights(request: Request, card: Any) -> None:
    """Refuse a variant compressed from other weights of this model (retrained ones, say): drift would compare it with the wrong original."""
    recorded = getattr(request.variant, "original_weights_sha256", None)
    current = card.weights.get("sha256")
    if not recorded or not current or recorded == current:
        return
    path = request.variant_path or getattr(request.variant, "name", "the variant")
    if request.module is not None:
        if request.weights is None:  # no file to blame: the builder's own initialisation was explained
            raise ExplainError(f"{path} was compressed from {request.model} weights with sha256 {recorded[:12]}…, but no --weights was given, "
                               f"so {request.model}() is explained with the weights it builds itself (sha256 {current[:12]}…); pass the "
                               "--weights it was compressed from")
        raise ExplainError(f"{path} was compressed from {request.model} weights with sha256 {recorded[:12]}…, but the --weights given "
                           f"have sha256 {current[:12]}…, so its drift would be measured against a different original; pass the "
                           "--weights it was made with, or compress these weights again")
    where = f"in --weights-root {request.weights_root}" if request.weights_root else "shipped with slimlens"
    fix = "pass the --weights-root it was made with"
    if request.weights_root and recorded == zoo.card(request.model).weights["sha256"]:
        fix = "leave out --weights-root: it was made from the shipped weights"
    raise ExplainError(f"{path} was compressed from {request.model} weights with sha256 {recorded[:12]}…, but the {request.model} weights "
                       f"{where} have sha256 {current[:12]}…, so its drift would be measured against a different original; {fix}, "
                       "or compress these weights again")


def _original_weights(plan: Plan) -> dict[str, Any]:
    """Whether the variant was checked to come from the original's weights (prepare refused a mismatch), for explain.json."""
    current = plan.card.weights.get("sha256")
    if getattr(plan.request.variant, "original_weights_sha256", None):
        return {"sha256": current, "checked": True}
    note = ("the variant's metadata records no sha256 of the weights it was compressed from (written by an older slimlens, or saved "
            f"by hand), so whether it was made from these {plan.card.name} weights cannot be checked")
    return {"sha256": current, "checked": False, "note": note}


def _variant_warnings(plan: Plan, name: str, agreement: float, original: dict[str, Any]) -> list[str]:
    """What a reader of the drift must know first: an unchecked origin, and a variant that mostly predicts otherwise."""
    warnings = [original["note"]] if not original["checked"] else []
    if agreement < LOW_AGREEMENT:
        if original["checked"]:
            why = "though it was made from these weights: compression changed what it predicts, so its maps explain other decisions"
        else:
            flag = "--weights" if plan.request.module is not None else "--weights-root"
            why = ("and which weights it was made from cannot be checked: it was likely compressed from other weights, so its drift compares "
                   f"two different models; pass the {flag} it was made with" + (" (none for the shipped weights)" if flag == "--weights-root" else ""))
        warnings.append(f"variant {name} agrees with {plan.card.name}'s predictions on only {agreement:.0%} of the {len(plan.inputs)} "
                        f"inputs, {why}")
    return warnings


def _exists(name: str) -> bool:
    try:
        zoo.card(name)
        return True
    except zoo.SlimlensError:
        return False


def _gradients_on_deployed(variant: Any) -> bool:
    """Whether a gradient method would run on the deployed variant itself, not on a float stand-in or not at all."""
    try:
        return resolve(variant, "saliency").note is None
    except ExplainError:
        return False


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold exactly the same parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def _stand_in_equals(variant: Any, model: nn.Module, method: str) -> bool:
    """Whether ``method`` would run on a float stand-in of ``variant`` whose weights are ``model``'s own."""
    try:
        target = resolve(variant, method)
    except ExplainError:
        return False
    return target.note is not None and isinstance(target.module, nn.Module) and _same_weights(target.module, model)


def _attribute_noting(model: Any, inputs: torch.Tensor, target: Any, method: str, options: dict[str, Any],
                      seed: int) -> tuple[torch.Tensor, str | None]:
    """``attribute`` plus the stand-in notice, caught and returned instead of printed as a Python warning.

    Seeded the same way for every call, so the original's and a variant's maps from a sampling method (LIME,
    KernelSHAP, GradientSHAP, a noise tunnel) use the same draws: otherwise drift counted sampling noise as
    change (a model against itself: KernelSHAP Spearman 0.31, LIME 0.45).
    """
    with same_draws(seed), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StandInWarning)
        maps = attribute(model, inputs, target=target, method=method, **options).detach()
    notes = [str(w.message) for w in caught if issubclass(w.category, StandInWarning)]
    return maps, (notes[0] if notes else None)


def _slug(source: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in source).strip("-").replace("--", "-")


def run(request: Request) -> dict[str, Any]:
    """Do the whole explain run for ``request`` and return what was written to ``explain.json``."""
    started = time.perf_counter()
    plan = prepare(request)
    say = request.progress
    torch.manual_seed(request.seed)
    result: dict[str, Any] = {
        "slimlens_explain": 1,
        "model": {"name": plan.card.name, "family": plan.card.family, "task": plan.card.task, "card_metric": {plan.card.primary_metric: plan.card.metric} if plan.card.metrics else {}},
        "inputs": {"sources": plan.sources, "labels": plan.labels, "conversions": plan.notes, "shape": list(plan.inputs.shape[1:])},
        "methods": {},
    }
    files: dict[str, bytes] = {}
    if plan.family in ("classifier", "lstm", "discriminator"):
        _explain_classifier(plan, result, files, say)
    else:
        (_explain_generator if plan.family == "generator" else _explain_autoencoder)(plan, result, files, say)
        if plan.request.trust:
            # deletion/insertion, infidelity and the randomisation check score evidence for one output score;
            # a generator's image or an autoencoder's code has no single score to delete evidence for
            result["trust"] = {"not_measured": f"the trust metrics score evidence for one class or logit, and a {plan.card.task} model "
                                               "has none: its maps show which latent or code units drive its outputs"}
            say("trust: not measured for a " + plan.card.task + " model (no single output score to test the maps against)")
    result["files"] = sorted(files) + ["explain.json"]
    result["environment"] = {
        "torch": torch.__version__,
        "captum": __import__("captum").__version__,
        "threads": torch.get_num_threads(),
        "seed": request.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result["seconds"] = round(time.perf_counter() - started, 2)
    files["explain.json"] = (json.dumps(result, indent=2, default=_json_default) + "\n").encode()
    _write_folder(Path(request.out).resolve(), files)
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a hidden temporary folder beside ``out``, then swap it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    usual_mode(tmp)
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name[-12:]}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- families ----------------------------------------------------------------------------------------


def _grid_rows(n: int, result: dict[str, Any], say: Callable[[str], None], halves: tuple[str, str] | None = None) -> list[int]:
    """The samples grid.png draws (at most GRID_MAX_ROWS), recorded in ``result`` and said when fewer than all.

    ``halves`` names the two equal groups the samples come in (a discriminator's real digits, then as
    many generated ones): a capped grid then draws the first of each rather than only the first group.
    """
    rows = min(n, GRID_MAX_ROWS)
    result["grid"] = {"samples": rows, "of": n}
    if rows == n:
        return list(range(n))
    if halves:
        first, second = rows // 2, rows - rows // 2
        shown = list(range(first)) + list(range(n // 2, n // 2 + second))
        which = f"the first {first} {halves[0]} and {second} {halves[1]}"
    else:
        shown, which = list(range(rows)), f"the first {rows}"
    note = f"grid.png shows {which} of {n} samples (a larger grid is too slow and too large to read); maps/ holds every sample"
    result["grid"]["note"] = note
    say(note)
    return shown


def _predict(forward: Any, inputs: torch.Tensor, probability: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs, predicted index and its score (softmax probability, or of a single output the predicted class's probability).

    ``probability`` says whether a single output is a probability (else a logit); None reads it from the values.
    """
    with torch.no_grad():
        out = forward(inputs).reshape(len(inputs), -1).float()
    if out.shape[1] > 1:
        p = out.softmax(1)
        return out, p.argmax(1), p.max(1).values
    if probability is None:
        probability = looks_like_probability(out)
    prob = out[:, 0] if probability else out[:, 0].sigmoid()
    return out, (prob >= 0.5).long(), torch.where(prob >= 0.5, prob, 1 - prob)


def _probability_output(card: Any) -> bool:
    """Whether a one-output model gives a probability (a binary classifier's sigmoid) rather than a logit (a discriminator's)."""
    if "output" in card.extra:  # a user's network: read from its outputs when its card was built
        return card.extra["output"] == "probability"
    return card.task == "binary-classification"


def _explain_classifier(plan: Plan, result: dict[str, Any], files: dict[str, bytes], say: Callable[[str], None]) -> None:
    model, x, names = plan.model, plan.inputs, plan.card.class_names or ["0", "1"]
    single_output = plan.card.task in ("binary-classification", "discrimination")
    probability = _probability_output(plan.card)
    out, pred, conf = _predict(model, x, probability if single_output else None)
    scale = _output_scale(out, single_output and probability)
    # explain what the model predicted; one output predicting the negative class explains the output negated
    target: Any = BinaryTarget(pred, probability) if single_output else pred
    # one logit (dcgan-d's, or a user's on mnist-ge5) is scored through its sigmoid, so trust figures are probabilities as for simplenet
    output_kind = "sigmoid" if single_output and not probability else "auto"
    negated = "1 - p" if probability else "-logit"
    result["inputs"].update({"predictions": [names[int(p)] for p in pred], "confidence": [round(float(c), 4) for c in conf]})
    row_labels = []
    for i, source in enumerate(plan.sources):
        truth = names[plan.labels[i]] if plan.labels[i] is not None else "?"
        row_labels.append(f"{source}\ntrue {truth} · pred {names[int(pred[i])]} ({float(conf[i]):.2f})")
    maps: dict[str, torch.Tensor] = {}
    for method in plan.methods:
        say(f"{method}: {len(x)} samples")
        t = time.perf_counter()
        maps[method], note = _attribute_noting(model, x, target, method, plan.options[method], plan.request.seed)
        base, tunnel = parse_method(method)
        result["methods"][method] = {
            "captum": f"NoiseTunnel({base.captum.__name__})" if tunnel else base.captum.__name__,
            "summary": base.summary,
            "settings": describe(plan.options[method]),
            "target": (f"the predicted class: the single output where it predicts '{names[1]}', its negation ({negated}) where it predicts "
                       f"'{names[0]}', so evidence for the predicted class is positive") if single_output else "the predicted class",
            "ran_on": note or f"{plan.card.name} (float PyTorch)",
            "seconds": round(time.perf_counter() - t, 3),
        }
        if base.layer:
            result["methods"][method].update(gradcam_layer_record(model, x))
        blank = _clear_noise(maps[method], scale)
        if blank.any():
            why = _zero_reason(method, result["methods"][method])
            why += "; trust and drift leave these maps out" if plan.request.trust or plan.request.variant is not None else ""
            result["methods"][method]["all_zero_maps"] = {"count": int(blank.sum()), "of": len(x), "samples": [s for s, b in zip(plan.sources, blank) if b], "why": why}
            say(f"{method}: {int(blank.sum())} of {len(x)} maps are all zero ({why})")
        for i, source in enumerate(plan.sources):
            # name the class the map is evidence for: the predicted one, whatever the model's outputs
            title = f"{method.replace('_', ' ')} · evidence for {names[int(pred[i])]}\n{row_labels[i].splitlines()[1]}"
            fig = heatmaps.row_heatmap(x[i], maps[method][i], title=title) if plan.family == "lstm" else heatmaps.heatmap(x[i], maps[method][i], title=title)
            files[f"maps/{_slug(source)}_{method.replace(':', '-')}.png"] = heatmaps.png_bytes(fig)
    shown = _grid_rows(len(x), result, say, ("real", "generated") if plan.family == "discriminator" else None)
    files["grid.png"] = heatmaps.png_bytes(heatmaps.grid(x[shown], {m: v[shown] for m, v in maps.items()}, row_labels=[row_labels[i] for i in shown],
                                                         shared_scale=plan.request.shared_scale))
    if plan.family == "lstm":
        result["lstm"] = {m: {"per_step_mean": [round(float(v), 6) for v in maps[m].reshape(len(x), 28, 28).sum(2).mean(0)]} for m in maps}
    if plan.request.trust:
        result["trust"], result["trust_settings"] = _trust(plan, maps, target, output_kind, say)
    if plan.request.variant is not None:
        result["variant"], result["drift"] = _drift(plan, maps, target, output_kind, files, say)


# A map whose largest |value| is below this fraction of the output's magnitude is float32 rounding noise, not
# evidence: occlusion and ablation maps are differences of two outputs, each exact only to half a float32 ulp
# (eps 1.19e-7), and batches of other sizes run through kernels that round differently, so an output that
# does not move at all still differs by a few ulps (simplenet's occlusion map of a blank image: 5.96e-8
# everywhere, one ulp of its 0.87). 1e-6 is about 8 ulps; a map any method computes from a real change of
# the output is orders of magnitude above it.
NOISE = 1e-6


def _output_scale(out: torch.Tensor, probability: bool) -> torch.Tensor:
    """Per sample, the magnitude of the numbers its explained score is computed from (the float noise in a map scales with it)."""
    scale = out.reshape(len(out), -1).abs().amax(1)
    # the negative class of a probability is 1 - p: its rounding is that of 1, however small p is
    return torch.maximum(scale, torch.ones_like(scale)) if probability else scale


def _clear_noise(maps: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Set to zero, in place, the maps that hold nothing above rounding noise, and return which samples they are.

    Every later test of blankness (the grid and map PNGs, trust, drift) then sees the same all-zero
    maps: noise drawn at its own full colour scale looked like evidence, and was scored as a ranking.
    """
    blank = maps.detach().reshape(len(maps), -1).abs().amax(1) <= NOISE * scale
    maps[blank] = 0
    return blank


def _nonzero(maps: torch.Tensor) -> torch.Tensor:
    """Per sample, whether its map has any non-zero element (an all-zero map ranks no pixel above another)."""
    return maps.detach().reshape(len(maps), -1).ne(0).any(1)


def _zero_reason(method: str, record: dict[str, Any]) -> str:
    """Why ``method`` gave all-zero maps, in one clause for explain.json and the progress output."""
    base, _ = parse_method(method)
    if base.layer:
        why = f"Grad-CAM keeps only positive evidence (relu_attributions) for the predicted class, and layer {record.get('layer', '?')} holds none for these inputs"
    else:
        why = f"{method} gives zero everywhere for these inputs: no value above float rounding noise ({NOISE:.0e} of the output's magnitude)".replace("e-0", "e-")
    return why


def _subset(target: Any, keep: torch.Tensor | slice) -> Any:
    return target[keep] if isinstance(target, BinaryTarget) or (isinstance(target, torch.Tensor) and target.dim()) else target


def _trust(plan: Plan, maps: dict[str, torch.Tensor], target: Any, output_kind: str, say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trust metrics per method (headline scalars first, then details) and the settings they were taken with."""
    model, x = plan.model, plan.inputs
    few = slice(0, min(TRUST_SAMPLES, len(x)))
    single = plan.card.task.startswith(("binary", "discr"))
    settings = {
        "deletion_insertion": {"steps": 28, "baseline": 0.0,
                               "score": "probability of the predicted class (the output's, or one minus it for the other class)" if single else "softmax probability of the target",
                               "read": "deletion AUC: lower is better; insertion AUC: higher is better; compare with the random_order row"},
        "infidelity": {"noise_std": 0.1, "n_perturb_samples": 10, "normalize": True, "read": "lower is better"},
        "sensitivity_max": {"perturb_radius": 0.02, "n_perturb_samples": 3, "samples": few.stop, "read": "lower is steadier"},
        "randomisation": {"cascade": "top layer first", "samples": few.stop, "flag": "final SSIM of |maps| > 0.3 (Adebayo et al., 2018) and more than 0.1 above noise confined to the input's non-zero pixels (else inconclusive)"},
    }
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(plan.request.seed))
    random_order = trust.deletion_insertion(model, x, noise, target, output=output_kind)
    report: dict[str, Any] = {"random_order": {"deletion_auc": float(random_order["deletion_auc"].mean()), "insertion_auc": float(random_order["insertion_auc"].mean())}}
    all_x, all_target = x, target
    for method, m in maps.items():
        keep = _nonzero(m)  # maps of rounding noise only were zeroed when computed
        if not keep.any():
            reason = f"every {method} map is all zero, so it ranks no pixel above another and any score of it would measure an arbitrary pixel order"
            say(f"trust: {method} not measured: every map is all zero")
            report[method] = {**dict.fromkeys(("deletion_auc", "insertion_auc", "infidelity", "sensitivity_max", "randomisation_final_ssim",
                                                "randomisation_flagged", "randomisation_inconclusive")),
                              "not_measured": reason,
                              "randomisation": {"verdict": f"not measured: {reason}", "flagged": False, "inconclusive": False, "final_ssim": None}}
            continue
        # scored on the samples whose maps are not blank
        x, m, target = all_x[keep], m[keep], _subset(all_target, keep)
        few = slice(0, min(TRUST_SAMPLES, len(x)))
        few_target = _subset(target, few)
        say(f"trust: {method}" + ("" if keep.all() else f" on the {int(keep.sum())} of {len(all_x)} samples whose maps are not all zero"))
        curves = trust.deletion_insertion(model, x, m, target, output=output_kind)
        infidelity = trust.infidelity_score(model, x, m, target)
        sensitivity = trust.sensitivity(model, x[few], few_target, method, n_perturb_samples=3, **plan.options[method])
        sanity = trust.randomisation_test(model, x[few], few_target, method, seed=plan.request.seed, **plan.options[method])
        if sanity["flagged"]:  # the one verdict that says the maps may not explain the model at all: not only in explain.json
            say(f"warning: {method}: fails the model-randomisation check: {sanity['verdict']}")
        entry: dict[str, Any] = {  # scalars first: one row of a table per method
            "deletion_auc": float(curves["deletion_auc"].mean()),
            "insertion_auc": float(curves["insertion_auc"].mean()),
            "infidelity": float(infidelity.mean()),
            "sensitivity_max": float(sensitivity.mean()),
            "randomisation_final_ssim": sanity["final_ssim"],
            "randomisation_flagged": sanity["flagged"],
            "randomisation_inconclusive": sanity["inconclusive"],
        }
        if not keep.all():
            entry["samples"] = [src for src, k in zip(plan.sources, keep) if k]
            entry["left_out"] = f"{int((~keep).sum())} of {len(all_x)} samples whose {method} maps are all zero"
            # the random_order row covers every sample: a fair baseline for this method covers the same ones
            entry["random_order_same_samples"] = {k: float(random_order[k][keep].mean()) for k in ("deletion_auc", "insertion_auc")}
        if method == "integrated_gradients":
            delta = trust.convergence_delta(model, x, target, **plan.options[method])
            entry["ig_relative_convergence_delta"] = delta["mean_relative_delta"]
            entry["convergence_delta"] = delta
        entry["details"] = {
            "deletion_auc": trust.summarise(curves["deletion_auc"]),
            "insertion_auc": trust.summarise(curves["insertion_auc"]),
            "deletion_curve_mean": [round(float(v), 4) for v in curves["deletion"].mean(0)],
            "insertion_curve_mean": [round(float(v), 4) for v in curves["insertion"].mean(0)],
            "deletion_auc_per_sample": [round(float(v), 4) for v in curves["deletion_auc"]],
            "insertion_auc_per_sample": [round(float(v), 4) for v in curves["insertion_auc"]],
            "infidelity": trust.summarise(infidelity),
            "sensitivity_max": trust.summarise(sensitivity),
        }
        entry["randomisation"] = sanity
        report[method] = entry
    return report, settings


def _drift(plan: Plan, maps: dict[str, torch.Tensor], target: Any, output_kind: str, files: dict[str, bytes], say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The variant's own predictions, and per method how far its maps moved from the original's (headline scalars first)."""
    variant, x = plan.request.variant, plan.inputs
    name = getattr(variant, "name", "variant")
    names = plan.card.class_names or ["0", "1"]
    single = plan.card.task in ("binary-classification", "discrimination")
    probability = _probability_output(plan.card) if single else None
    v_out, v_pred, _ = _predict(variant, x, probability)
    pred = target.classes if isinstance(target, BinaryTarget) else target  # the original's predictions, as _explain_classifier made them
    v_scale = _output_scale(v_out, bool(single and probability))
    agreement = float((v_pred == pred).float().mean())
    original = _original_weights(plan)
    info = {
        "name": name,
        "format": getattr(variant, "format", None),
        "path": plan.request.variant_path,
        "agreement_with_original": agreement,
        "predictions": [names[int(p)] for p in v_pred],
        "gradient_methods_run_on": _gradient_host(variant, plan.model),
        "original_weights": original,
        "warnings": _variant_warnings(plan, name, agreement, original),
    }
    for warning in info["warnings"]:
        say(f"warning: {warning}")  # a warning line, which --quiet keeps: the drift figures below may compare two different models
    labels = [lab if lab is not None else -1 for lab in plan.labels]
    report: dict[str, Any] = {}
    for method, original in maps.items():
        if _stand_in_equals(variant, plan.model, method):
            reason = (f"{method} needs gradients, so it would run on the float stand-in of variant {name}, whose weights equal "
                      f"{plan.card.name}'s: its maps would equal the original's by construction and say nothing about the deployed variant; "
                      f"use a gradient-free method ({', '.join(GRADIENT_FREE_DEFAULTS)}) to measure it")
            say(f"drift: {method} not measured: {reason}")
            report[method] = _not_measured(reason)
            continue
        say(f"drift: {method} on {name}")
        changed, note = _attribute_noting(variant, x, target, method, plan.options[method], plan.request.seed)
        if note:  # the stand-in's weights differ from the original's, but it is still not the deployed arithmetic
            note += "; this drift measures the stand-in's float weights, not what the deployed variant computes"
        # two blank maps would "agree" perfectly: only samples where both maps have content are compared
        _clear_noise(changed, v_scale)  # as the original's maps were
        kept = (_nonzero(original) & _nonzero(changed)).nonzero().flatten().tolist()
        if not kept:
            reason = f"every {method} map of the original or of the variant is all zero, so there is no map to compare"
            say(f"drift: {method} not measured: {reason}")
            report[method] = _not_measured(reason)
            continue
        compared = drift_mod.compare(original[kept], changed[kept], [labels[i] for i in kept], worst=min(5, len(kept)))
        for item in compared["most_drifting"]:
            item["position"] = kept[item["position"]]
            item["sample"] = plan.sources[item["position"]]
        spearman_of = dict(zip(kept, compared["per_sample"]["spearman"]))
        floor = drift_mod.floor_record(original[kept], changed[kept])
        headline = drift_mod.headline(compared["mean"], floor)
        say(f"drift: {method}: {headline}")
        worst = [item["position"] for item in compared["most_drifting"]]
        figure = f"drift_{method.replace(':', '-')}.png"
        files[figure] = heatmaps.png_bytes(
            heatmaps.drift_figure(x[worst], original[worst], changed[worst], labels=[f"{plan.sources[i]}\nSpearman {spearman_of[i]:.2f}" for i in worst],
                                  names=("original", f"{name}\n(float stand-in)" if note else name), title=drift_mod.figure_title(method, compared["mean"], floor, len(kept), len(x)))
        )
        both = torch.tensor(kept)  # faithfulness, too, only where both maps rank pixels
        faithfulness = trust.faithfulness_change(plan.model, variant, x[both], original[both], changed[both], _subset(target, both), output=output_kind, of=len(x))
        report[method] = {
            **compared["mean"],
            "deletion_auc_change": faithfulness["change"]["deletion_auc"],
            "insertion_auc_change": faithfulness["change"]["insertion_auc"],
            "measured": True,
            "variant_ran_on": note or f"variant {name} itself",
            "figure": figure,
            "per_class": compared.get("per_class"),
            "most_drifting": compared["most_drifting"],
            "faithfulness": faithfulness,
            "mean": compared["mean"],
            "min": compared["min"],
            "floor": floor,
            "details": {k: compared[k] for k in ("settings", "per_sample")},
        }
        if len(kept) < len(x):
            left_out = [plan.sources[i] for i in range(len(x)) if i not in spearman_of]
            report[method]["left_out"] = f"{len(left_out)} of {len(x)} samples where a map is all zero: {', '.join(left_out)}"
            report[method]["details"]["samples"] = [plan.sources[i] for i in kept]
    return info, report


def _gradient_host(variant: Any, model: nn.Module) -> str:
    """What a gradient method runs on for ``variant``, in words for explain.json."""
    try:
        target = resolve(variant, "saliency")
    except ExplainError:
        return "nothing: the variant has no gradients and no float stand-in, so only gradient-free methods apply"
    if target.note is None:
        return "the variant itself"
    if isinstance(target.module, nn.Module) and _same_weights(target.module, model):
        return "a float stand-in whose weights equal the original's, so gradient-method drift is not measured"
    return "a float stand-in with the variant's weights in float, not the deployed variant"


def _not_measured(reason: str) -> dict[str, Any]:
    """A drift entry with every figure left empty (JSON null) and the reason, in the layout of a measured one."""
    empty = dict.fromkeys(drift_mod.metric_names())
    return {
        **empty,
        "deletion_auc_change": None,
        "insertion_auc_change": None,
        "measured": False,
        "not_measured": reason,
        "variant_ran_on": f"not measured: {reason}",
        "figure": None,
        "per_class": None,
        "most_drifting": [],
        "faithfulness": None,
        "mean": dict(empty),
        "min": dict(empty),
        "floor": None,
    }


def _explain_generator(plan: Plan, result: dict[str, Any], files: dict[str, bytes], say: Callable[[str], None]) -> None:
    generator, z = plan.model, plan.inputs
    judge = plan.partner
    with torch.no_grad():
        images = generator(z)
        scores = torch.sigmoid(judge(images)).reshape(-1) if judge is not None else None
    what = "D(G(z)) (the discriminator's logit)" if judge is not None else "the generated image's mean brightness"
    result["inputs"]["discriminator_real_probability"] = [round(float(s), 4) for s in scores] if scores is not None else None
    maps = {}
    for method in plan.methods:
        say(f"{method}: {len(z)} latents")
        t = time.perf_counter()
        maps[method] = latent_attribution(generator, z, judge, method=method, **plan.options[method])
        base, _ = parse_method(method)
        result["methods"][method] = {"captum": base.captum.__name__, "settings": describe(plan.options[method]), "explains": what, "seconds": round(time.perf_counter() - t, 3),
                                     "top_latent_units": [[int(i) for i in row.abs().argsort(descending=True)[:5]] for row in maps[method]]}
        for i, source in enumerate(plan.sources):
            p = f" · D says real {float(scores[i]):.2f}" if scores is not None else ""
            files[f"maps/{_slug(source)}_{method.replace(':', '-')}.png"] = heatmaps.png_bytes(heatmaps.bars(maps[method][i], title=f"{method.replace('_', ' ')}: {what} by latent unit{p}"))
    shown = _grid_rows(len(z), result, say)
    labels = [f"#{i} D={float(scores[i]):.2f}" if scores is not None else f"#{i}" for i in shown]
    title = "generated digits G(z)" + (" · D = the discriminator's probability of 'real'" if scores is not None else "")
    files["grid.png"] = heatmaps.png_bytes(heatmaps.image_panel(images[shown], labels=labels, title=title))


def _explain_autoencoder(plan: Plan, result: dict[str, Any], files: dict[str, bytes], say: Callable[[str], None]) -> None:
    model, x = plan.model, plan.inputs
    with torch.no_grad():
        codes = model.encoder(x)
    grid_maps = {}
    for method in plan.methods:
        say(f"{method}: {codes.shape[1]} code units x {len(x)} samples")
        t = time.perf_counter()
        per_unit = code_attribution(model, x, method=method, **plan.options[method])  # (N, units, 1, 28, 28)
        strongest = codes.argmax(1)
        grid_maps[f"{method} (unit)"] = per_unit[torch.arange(len(x)), strongest]
        base, _ = parse_method(method)
        result["methods"][method] = {"captum": base.captum.__name__, "settings": describe(plan.options[method]), "explains": "each latent code unit of model.encoder", "seconds": round(time.perf_counter() - t, 3)}
        for i, source in enumerate(plan.sources):
            labels = [f"unit {u} = {float(codes[i, u]):.2f}" for u in range(codes.shape[1])]
            files[f"maps/{_slug(source)}_{method.replace(':', '-')}.png"] = heatmaps.png_bytes(heatmaps.panel(x[i:i + 1], per_unit[i], labels=labels, title=f"{method.replace('_', ' ')}: code units ← pixels ({source})", columns=5))
    result["inputs"]["strongest_code_unit"] = [int(u) for u in codes.argmax(1)]
    row_labels = [f"{s}\nstrongest unit {int(codes[i].argmax())}" for i, s in enumerate(plan.sources)]
    shown = _grid_rows(len(x), result, say)
    files["grid.png"] = heatmaps.png_bytes(heatmaps.grid(x[shown], {m: v[shown] for m, v in grid_maps.items()}, row_labels=[row_labels[i] for i in shown],
                                                         shared_scale=plan.request.shared_scale))


__all__ = ["DEFAULT_METHODS", "METHODS", "Plan", "Request", "prepare", "run"]
