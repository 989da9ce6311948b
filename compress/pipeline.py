"""``run``: apply a recipe to a model and return every variant it made, measured, with the results dict.

The variants, in order: ``original`` (the model as given), ``original-onnx`` (its fp32 ONNX export,
so speed-ups can be stated against both PyTorch eager and ONNX Runtime), then each step's outputs.

How step outputs chain:

* a float32 ``nn.Module`` (or a plain ``TorchVariant``, which also names its architecture) becomes the
  input of the next step, and its variant's ``steps`` list every step that led to it;
* any other ``Variant`` (an int8 ONNX file, a dynamic-int8 or fp16 module, compressed storage) ends its
  branch: the next step continues from the last float module;
* a dict of outputs (distillation's ``student`` and ``alone``): the first continues the chain, the others
  are recorded beside it as ``<name>-<key>``.

A variant is named by the recipe step's ``name``, else the name the step gave it, else the step's name.
A step function that takes an ``original`` argument receives the run's original model (a teacher).
Each float32 PyTorch variant is exported to ONNX and checked against its own outputs; a failed or
skipped export is recorded on the variant with its reason. A step with ``max_drop`` searches its
strength (see ``_search``); an ``optional`` step that does not apply to the model is recorded as skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from compress.context import CompressionData, data_for
from compress.prune import dense_weights_warning, prunable_weights
from compress.recipe import Recipe, RecipeStep, load_recipe
from compress.results import SCHEMA, counted_module, is_float_module, move_into_place, staging_dir, write_results
from compress.steps import get_step
from compress.variant import OnnxVariant, TorchVariant, Variant, build_module
from zoo.environment import environment
from zoo.errors import SlimlensError, first_line
from zoo.footprint import disk_bytes, module_macs, module_params, onnx_macs, onnx_params
from zoo.metrics import batched_outputs, decision_threshold, looks_like_probability, output_parity
from zoo.weights import weights_sha256

Progress = Callable[[str], None]
POINT_METRICS = ("accuracy", "macro_f1", "confident_fraction")  # fractions whose tolerances are given in points
# Search candidates whose gzip sizes differ by less than this fraction are the same size: a few
# bytes of gzip noise (calibration methods differ by ~0.01%) must not outrank a smaller metric drop.
SAME_SIZE = 0.01
# A classifier's int8 ONNX file against its float model: rounding flips a few borderline inputs;
# more than this share of flips points at a broken quantization (e.g. calibration on too few inputs).
QUANTIZED_MIN_AGREEMENT = 0.98
# A step that costs more than this many points (of the variant it started from) has most likely broken
# the model for this use: a preset's strength tuned on one network can be far too strong for another.
LARGE_STEP_DROP = 5.0
# Distillation's student trained alone beating the distilled one by this much means the teacher's targets hurt.
ALONE_BEATS_DISTILLED = 1.0


class RunResult(list):
    """The variants of a run (a list, original first) with ``results`` (the results.json dict) and ``out_dir``."""

    def __init__(self, variants: list[Variant], results: dict[str, Any], out_dir: Path):
        super().__init__(variants)
        self.results = results
        self.out_dir = out_dir

    def variant(self, name: str) -> Variant:
        """The variant called ``name``."""
        for v in self:
            if v.name == name:
                return v
        raise KeyError(name)


@dataclasses.dataclass
class _Output:
    """One produced variant before it is saved, with the float module whose params and MACs it has (an ONNX one counts its file)."""

    variant: Variant
    counted: nn.Module
    chains: bool  # whether the next step continues from it


def _wrap(output: Any, source: dict, fallback: nn.Module) -> _Output:
    if isinstance(output, TorchVariant):
        counted = counted_module(output, fallback)
        return _Output(output, counted, chains=counted is output.module and type(output) is TorchVariant)
    if isinstance(output, nn.Module):
        return _wrap(TorchVariant(name="", source=dict(source), module=output.eval()), source, fallback)
    if isinstance(output, Variant):
        return _Output(output, output.stand_in or fallback, chains=False)
    raise SlimlensError(f"a step returned {type(output).__name__}, not a module or a variant")


def _outputs(output: Any, recipe_step: RecipeStep, source: dict, fallback: nn.Module) -> list[tuple[str, _Output]]:
    if isinstance(output, dict):
        label = recipe_step.label
        items = list(output.items())
        return [(label if i == 0 else f"{label}-{key}", _wrap(value, source, fallback)) for i, (key, value) in enumerate(items)]
    wrapped = _wrap(output, source, fallback)
    return [(recipe_step.name or wrapped.variant.name or recipe_step.step, wrapped)]


def _call(recipe_step: RecipeStep, config: Any, module: nn.Module, data: CompressionData, original: nn.Module,
          progress: Progress) -> Any:
    function = get_step(recipe_step.step).function
    kwargs: dict[str, Any] = {"progress": progress}
    if "original" in inspect.signature(function).parameters:
        kwargs["original"] = original
    torch.manual_seed(data.seed)  # each step's randomness depends on the seed alone, not on the steps before it
    return function(module, config, data, **kwargs)


def metric_drop_points(data: CompressionData, base: dict, new: dict) -> float:
    """How much worse ``new`` is than ``base`` on the primary metric: points for fractions, metric units otherwise."""
    drop = data.metric_drop(base, new)
    return drop * 100 if data.primary_metric in POINT_METRICS else drop


def _step_warnings(data: CompressionData, recipe_step: RecipeStep, before: dict, made: list[dict]) -> list[str]:
    """Warnings about what a step made: a large loss against the variant it started from, or a distillation that hurt."""
    if data.primary_metric not in POINT_METRICS:  # FD and MSE have no scale on which "large" means the same for every model
        return []
    if data.task == "discrimination":
        # a discriminator's accuracy on real against its own generator's digits sits near chance by design
        # (0.60 for dcgan-d), so a few points there say little about damage; its report shows the figures
        return []
    metric, warnings = data.primary_metric, []
    first = made[0]["metrics"][metric]
    lost = metric_drop_points(data, before, made[0]["metrics"])
    if recipe_step.max_drop is None and lost > LARGE_STEP_DROP:
        searchable = getattr(type(recipe_step.config), "strength_field", None)
        warnings.append(f"{metric} fell {lost:.1f} points in this step ({before[metric]:.3f} → {first:.3f}); "
                        + ("a gentler setting, or max_drop with a search, keeps the model usable" if searchable else
                           "this step may not suit the model; compare its variant in the report before deploying it"))
    if recipe_step.step == "distill" and len(made) > 1:
        alone = made[1]["metrics"][metric]
        ahead = metric_drop_points(data, made[1]["metrics"], made[0]["metrics"])
        if round(ahead, 9) >= ALONE_BEATS_DISTILLED:  # 100 * (0.94 - 0.93) is 0.9999999999999996
            warnings.append(f"the student trained alone beat the distilled one ({alone:.3f} against {first:.3f}): the teacher's "
                            f"soft targets hurt this student; try a lower temperature or alpha, more epochs, or augment = false "
                            f"if the teacher scores poorly on augmented digits")
    return warnings


# Steps whose whole point is a smaller file: one that grows it is worth a word
SHRINKING_STEPS = frozenset({"quantize_static_onnx", "quantize_dynamic_onnx", "quantize_dynamic", "quantize_pt2e", "qat", "half_precision"})


def _size_warnings(step: str, made: list[dict], before: dict, entries: list[dict]) -> list[str]:
    """A quantized file larger than the float file of the same format it was made from (a tiny model's graph outweighs its weights)."""
    if step not in SHRINKING_STEPS:
        return []
    same_format = {before["format"]: before}
    exported = (before.get("onnx_export") or {}).get("variant")
    same_format.update({e["format"]: e for e in entries if exported and e["name"] == exported})
    warnings = []
    for entry in made:
        reference = same_format.get(entry["format"])
        if reference is not None and entry["size_bytes"] > reference["size_bytes"]:
            warnings.append(f"{entry['name']} is {entry['size_bytes']:,} bytes, more than the {reference['size_bytes']:,} of {reference['name']}, "
                            f"the float model it was made from, so this step saves no space on this model (at {before['params']:,} "
                            "parameters, graph, scales and zero points can outweigh the weights)")
    return warnings


def _compressed_bytes(variant: Variant) -> int:
    with tempfile.TemporaryDirectory(prefix="slimlens-search-") as tmp:
        saved = copy.copy(variant)  # saving sets the artifact path; keep the candidate's own untouched
        saved.save(tmp)
        return disk_bytes(saved.artifact)["gzip_bytes"]


def _search(recipe_step: RecipeStep, module: nn.Module, data: CompressionData, original: nn.Module,
            base_metrics: dict, progress: Progress) -> tuple[Any, Any, dict]:
    """Try the step's strengths weakest first; keep the smallest (gzip bytes) output within ``max_drop``.

    Sizes within ``SAME_SIZE`` of the smallest count as equal and go to the smaller drop (e.g.
    calibration methods, whose files differ by a few bytes). For numeric strengths the search
    stops at the first one past the tolerance: stronger ones are assumed worse. If none is within it,
    the weakest is kept and the trail says the tolerance was not met.
    """
    field = type(recipe_step.config).strength_field
    trail, within_tolerance, weakest = [], [], None
    for value in recipe_step.search_values():
        config = dataclasses.replace(recipe_step.config, **{field: value})
        progress(f"{recipe_step.label}: trying {field}={value}")
        try:
            output = _call(recipe_step, config, module, data, original, progress)
        except SlimlensError as exc:
            if weakest is None:
                raise  # the step refuses even the weakest: the model does not suit it (an optional step is skipped)
            # a stronger value the step cannot make (a width that keeps no channel) ends the search, as one
            # past max_drop does, instead of throwing away the candidates already made
            trail.append({field: value, "refused": str(exc), "within": False})
            progress(f"{recipe_step.label}: {field}={value} refused ({exc}); the search stops here")
            break
        candidate = _outputs(output, recipe_step, data.source, module)[0][1].variant
        metrics = data.evaluate(candidate, reference=_forward(original))
        drop = metric_drop_points(data, base_metrics, metrics)
        size = _compressed_bytes(candidate)
        within = within_max_drop(drop, recipe_step.max_drop)
        trail.append({field: value, data.primary_metric: metrics[data.primary_metric], "drop": round(drop, 4),
                      "gzip_bytes": size, "within": within})
        unit = " points" if data.primary_metric in POINT_METRICS else ""  # max_drop counts points of a fraction, else the metric's units
        progress(f"{recipe_step.label}: {field}={value} → drop {drop:.3f}{unit}, {size:,} gzip bytes{'' if within else ' (past max_drop)'}")
        weakest = weakest or (output, config)
        if within:
            within_tolerance.append((output, config, size, drop))
        elif isinstance(value, int | float):
            break
    met = bool(within_tolerance)
    output, config = _smallest(within_tolerance)[:2] if met else weakest
    if not met:  # drops count from the original, so an earlier step's loss counts here too
        progress(f"warning: {recipe_step.label}: no {field} kept the drop from the original within max_drop "
                 f"{recipe_step.max_drop}; kept the weakest, {field}={getattr(config, field)} (results.json: timings, search.met = false)")
    return output, config, {"field": field, "max_drop": recipe_step.max_drop, "chosen": getattr(config, field),
                            "met": met, "same_size_within": SAME_SIZE, "trail": trail}


def within_max_drop(drop: float, max_drop: float) -> bool:
    """Whether a drop is within the tolerance, a drop equal to it included."""
    # rounded: 100 * (0.98 - 0.96) is 2.0000000000000018, yet twenty digits of 1,000 are exactly 2 points
    return round(drop, 9) <= max_drop


def _smallest(candidates: list[tuple[Any, Any, int, float]]) -> tuple[Any, Any, int, float]:
    """The candidate with the smallest drop among those within ``SAME_SIZE`` of the smallest gzip size."""
    smallest = min(size for _, _, size, _ in candidates)
    near = [c for c in candidates if c[2] <= smallest * (1 + SAME_SIZE)]
    return min(near, key=lambda c: (c[3], c[2]))


def _forward(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(batch).float()

    return forward


class _Recorder:
    """Saves each variant, measures it and keeps its results entry."""

    def __init__(self, data: CompressionData, original: nn.Module, variants_dir: Path, out_dir: Path, export: bool,
                 exporter: str, progress: Progress):
        from compress.export import parity_inputs

        self.data, self.original, self.variants_dir, self.out_dir = data, original, variants_dir, out_dir
        self.export, self.exporter, self.progress = export, exporter, progress
        self.inputs = parity_inputs(data)
        self.reference = batched_outputs(_forward(original), self.inputs)
        self.classifier = data.task in ("classification", "binary-classification", "discrimination")
        self.example = data.example_input(1)
        self.variants: list[Variant] = []
        self.entries: list[dict[str, Any]] = []
        self.base_metrics: dict | None = None
        # every variant names the weights it came from: explain refuses to compare it with another original
        self.original_sha256 = weights_sha256(original)

    def unique(self, name: str) -> str:
        taken = {v.name for v in self.variants}
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}-{n}", n + 1
        return candidate

    def add(self, output: _Output, name: str, steps: list[dict], seconds: float, extra: dict | None = None) -> dict:
        variant = output.variant
        variant.name, variant.steps = self.unique(name), steps
        variant.source = variant.source or dict(self.data.source)
        variant.original_weights_sha256 = self.original_sha256
        if isinstance(variant, OnnxVariant):
            variant.threads = torch.get_num_threads()
        variant.save(self.variants_dir)
        sizes = disk_bytes(variant.artifact)
        counts = self._counts(output)
        metrics = self.data.evaluate(variant, reference=_forward(self.original))
        if self.base_metrics is None:
            self.base_metrics = metrics
        entry = {
            "name": variant.name, "format": variant.format, "steps": steps,
            "artifact": str(Path(variant.artifact).resolve().relative_to(self.out_dir.resolve())),
            **sizes, **counts, "metrics": metrics,
            "metric_drop": round(metric_drop_points(self.data, self.base_metrics, metrics), 4) + 0.0,  # no "-0.0"
            "parity": output_parity(self.reference, batched_outputs(variant, self.inputs), self.classifier,
                                    decision_threshold(self.data.task)),
            "seconds": round(seconds, 2), **(extra or {}),
        }
        if isinstance(variant, OnnxVariant) and variant.stand_in is not None:
            entry["export_check"] = self._quantization_check(variant)
        self.variants.append(variant)
        self.entries.append(entry)
        self.progress(f"  {variant.name}: {self.data.primary_metric} {metrics[self.data.primary_metric]:.4f}, "
                      f"{sizes['size_bytes']:,} bytes, {counts['params']:,} params")
        if self.export and isinstance(variant, TorchVariant):
            if type(variant) is TorchVariant and is_float_module(variant.module):
                self._export(variant, entry)
            else:
                entry["onnx_export"] = {"exported": False, "reason": _no_export_reason(variant)}
        return entry

    def _counts(self, output: _Output) -> dict[str, int]:
        """params, nonzero_params and macs as ``reports.measure`` counts them: an ONNX variant from its file."""
        variant = output.variant
        if isinstance(variant, OnnxVariant):
            return {**onnx_params(variant.artifact), "macs": onnx_macs(variant.artifact, self.example)}
        return {**module_params(output.counted), "macs": module_macs(output.counted, self.example)}

    def _quantization_check(self, variant: OnnxVariant) -> dict[str, Any]:
        """The ONNX file against the float model it was made from: the error its quantization alone adds."""
        from compress.export import check_parity

        # int8 outputs are lossy, so no max-difference bound; a classifier's predictions should still agree
        classifier = self.data.task in ("classification", "binary-classification")
        check = check_parity(_forward(variant.stand_in), variant, self.inputs, atol=None,
                             min_agreement=QUANTIZED_MIN_AGREEMENT if classifier else 0.0, threshold=decision_threshold(self.data.task))
        if not classifier and "reason" not in check:
            # a discriminator's generated digits sit at its threshold (97% agreement is a good int8 there), and
            # images or reconstructions have no class to agree on: the differences are recorded, not judged
            check.update(passed=None, tolerance=None, note=f"no pass rule for int8 {self.data.task} outputs; compare the figures")
        return check

    def _export(self, variant: TorchVariant, entry: dict) -> None:
        """Add ``<name>-onnx``, checked against the PyTorch variant's own outputs; record a failure on the variant."""
        from compress.export import ExportError, check_parity, export_onnx, onnx_exporter

        name = self.unique(f"{variant.name}-onnx")
        start = time.perf_counter()
        try:
            path = export_onnx(variant.module, self.data.example_input(2), self.variants_dir / f"{name}.onnx", exporter=self.exporter)
        except ExportError as exc:
            entry["onnx_export"] = exc.record()
            self.progress(f"  {variant.name}: ONNX export failed ({exc})")
            return
        seconds = time.perf_counter() - start
        onnx_variant = OnnxVariant(name=name, source=dict(variant.source), artifact=path, threads=torch.get_num_threads())
        check = check_parity(variant, onnx_variant, self.inputs, threshold=decision_threshold(self.data.task))
        entry["onnx_export"] = {"exported": True, "variant": name, "passed": check["passed"]}
        steps = variant.steps + [{"step": "export_onnx", "exported_with": onnx_exporter(path)}]
        self.add(_Output(onnx_variant, variant.module, chains=False), name, steps, seconds, {"export_check": check})


def _no_export_reason(variant: TorchVariant) -> str:
    """Why a PyTorch variant that is not plain float32 gets no ONNX export."""
    from compress.quantize.half import HalfTorchVariant

    if isinstance(variant, HalfTorchVariant):
        # Tried (onnxruntime 1.32): bf16 Conv/LSTM graphs do not load; fp16 ones do, but the CPU provider
        # inserts casts and computes most of the graph in float32, so the export adds nothing on a CPU.
        return ("half-precision variants are not exported to ONNX: ONNX Runtime's CPU provider has no bfloat16 Conv/LSTM "
                "and computes most float16 ops in float32 (see original-onnx for that); "
                f"this {variant.dtype} variant deploys as PyTorch weights")
    return (f"{type(variant).__name__} is a quantized or storage form; ONNX exports are made of float32 PyTorch variants "
            "(int8 ONNX comes from the quantize_static_onnx and quantize_dynamic_onnx steps)")


def load_model(model: str, weights: str | Path | None = None, trust_pickle: bool = False) -> nn.Module:
    """A zoo model by name (its shipped weights, or ``weights``), or ``package.module:function`` loaded from ``weights``.

    ``weights`` is a safetensors file or a state dict that ``torch.load(weights_only=True)`` reads;
    a pickle that needs full unpickling (which can run code) is read only with ``trust_pickle``.
    """
    import zoo
    from zoo.weights import load_into

    if ":" not in model:
        if model not in zoo.list_models() and "." in model:  # a dotted name is a module path missing its builder
            raise SlimlensError(f"no zoo model named {model!r}; to compress your own model give package.module:function, "
                                f"e.g. {model}:build, a function that returns the torch module")
        if weights is None:
            return zoo.load(model)
        module = zoo.build(model)
    else:
        module = build_module(model)
    if weights is not None:
        load_into(module, _read_weights(Path(weights), trust_pickle), Path(weights))
    return module.eval()


CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def _read_weights(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    import pickle

    from zoo.errors import WeightsError
    from zoo.weights import read_state_dict

    if path.is_dir():
        raise WeightsError(f"--weights {path} is a folder; name the weights file in it (.safetensors, or a torch state dict)")
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    not_a_checkpoint = f"{path} is neither safetensors nor a torch checkpoint; pass the file the model's weights were saved to"
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Only a pickle naming a Python global (a class, a function) needs full unpickling; torch
        # raises the same error type for bytes that are no pickle at all.
        if "global" not in str(exc).lower():
            raise WeightsError(not_a_checkpoint) from None
        if not trust_pickle:
            raise WeightsError(f"{path} needs full unpickling, which can run arbitrary code; "
                               "re-save it as a state dict or safetensors, or pass --trust-pickle if you trust it") from None
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # the trusted pickle may still need classes this process cannot import
            raise WeightsError(f"{path} could not be unpickled: {str(exc2).splitlines()[0][:200]}") from None
    except Exception:  # torch.load raises several types for files that are not checkpoints
        raise WeightsError(not_a_checkpoint) from None
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    is_state = lambda value: isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values())  # noqa: E731
    if isinstance(loaded, dict) and not is_state(loaded):
        # a training checkpoint: the weights under the key PyTorch's tutorials use, beside the epoch and optimizer
        found = [loaded.get(key) for key in CHECKPOINT_KEYS]
        found = [value.state_dict() if isinstance(value, nn.Module) else value for value in found]  # a whole module (--trust-pickle)
        inner = next((value for value in found if is_state(value)), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(loaded)[:6]) + (", …" if len(loaded) > 6 else "")
            raise WeightsError(f"{path} holds a dict ({keys or 'empty'}) with no state dict (name → tensor) under "
                               f"{', '.join(CHECKPOINT_KEYS)}; save model.state_dict() and pass that file")
        loaded = inner
    if not is_state(loaded):
        raise WeightsError(f"{path} does not hold a state dict (name → tensor)")
    return loaded


def _resolve(model: nn.Module | str, recipe: Recipe | str | Path | list, data: CompressionData | str | None,
             seed: int) -> tuple[nn.Module, Recipe, CompressionData]:
    import zoo

    if isinstance(recipe, list):
        recipe = Recipe.from_steps(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if isinstance(model, str):
        data = data if data is not None else model
        model = zoo.load(model)
    else:
        model = copy.deepcopy(model)  # the caller's module keeps its mode and weights, whatever the steps do
    if data is None:
        raise SlimlensError("pass data: a CompressionData (compress.context.data_for) or a zoo model name")
    if isinstance(data, str):
        data = data_for(data, seed=seed)
    if data.family == "custom":
        check_fits(model.eval(), data)
        data = user_family(model, data)
    return model.eval(), recipe, data


def user_family(model: nn.Module, data: CompressionData) -> CompressionData:
    """``data`` with a user's model's family for recipe routing: lstm with a recurrent layer, cnn with a convolution, else mlp."""
    # The presets give recurrent models gentler pruning and dynamic instead of static int8 by family;
    # as "custom", the edge preset's static int8 step would refuse a user's LSTM after minutes of work, and a
    # step with families = ["cnn"] (the README's example) skipped a user's CNN. A conv → LSTM network is lstm
    # here: its LSTM op is what static int8 cannot calibrate.
    # Fine-tuning clips the gradient norm at 1 as the zoo's LSTM was trained (the presets' learning rates
    # were tuned with it), unless the caller set a norm of their own.
    if data.family != "custom":
        return data
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return dataclasses.replace(data, family="lstm", clip_grad_norm=1.0 if data.clip_grad_norm is None else data.clip_grad_norm)
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return dataclasses.replace(data, family="cnn" if has_conv else "mlp")


def check_families(recipe: Recipe, data: CompressionData) -> None:
    """Refuse, before any work, a step that cannot compress this model's family (unless skipped or optional), or asks it for mixup without labels."""
    for index, recipe_step in enumerate(recipe.steps):
        if recipe_step.optional or (recipe_step.families is not None and data.family not in recipe_step.families):
            continue
        supported = get_step(recipe_step.step).families
        if supported is not None and data.family not in supported:
            family = f"family {data.family}" + (", as it holds a recurrent layer" if "builder" in data.source and data.family == "lstm" else "")
            raise SlimlensError(f"step {index + 1} ({recipe_step.step}) does not apply to {data.model_name} ({family}): "
                                f"it compresses {', '.join(supported)} models; mark it optional = true, "
                                f"or give it families = [...] in the recipe")
        if getattr(recipe_step.config, "mixup", 0) > 0 and not data.labelled:
            raise SlimlensError(f"step {index + 1} ({recipe_step.step}): mixup blends labelled digits and {data.model_name} is a "
                                f"{data.task} model with none; set mixup = 0, or give the step families = [...] in the recipe")


def check_layer_names(recipe: Recipe, model: nn.Module, data: CompressionData) -> None:
    """Refuse, before any work, ``layer_sparsity`` names that are not prunable layers of ``model`` (steps skipped or optional aside)."""
    # a pooling layer or a container is a layer too, but one the step would silently leave alone
    layer_names = {module: name for name, module in model.named_modules()}
    names = {layer_names[module] for module, _ in prunable_weights(model)}
    for index, recipe_step in enumerate(recipe.steps):
        if recipe_step.families is not None and data.family not in recipe_step.families:
            continue
        if getattr(recipe_step.config, "student", "self") not in ("auto", "self"):
            return  # a zoo student has its own layer names; the step that prunes it checks them
        if recipe_step.optional:
            continue  # when it runs, its own check makes it a recorded skip
        unknown = sorted({name for name, _ in getattr(recipe_step.config, "layer_sparsity", ())} - names)
        if unknown:
            raise SlimlensError(f"{recipe.origin}: step {index + 1} ({recipe_step.step}): layer_sparsity names {unknown}, which are not prunable layers of "
                                f"{type(model).__name__}; its prunable layers: {', '.join(sorted(names))}")


STATIC_INT8_STEPS = ("quantize_static_onnx", "qat", "quantize_pt2e")


def check_recurrent(recipe: Recipe, model: nn.Module, data: CompressionData) -> None:
    """Refuse, before any work, a static int8 step (not optional) on a model that holds an LSTM or GRU it would leave in float."""
    from compress.quantize.common import require_static_family

    for index, recipe_step in enumerate(recipe.steps):
        if recipe_step.optional or recipe_step.step not in STATIC_INT8_STEPS or (
                recipe_step.families is not None and data.family not in recipe_step.families):
            continue
        try:
            require_static_family(data, recipe_step.step, "static int8 has no calibrated recurrent op", model)
        except SlimlensError as exc:
            raise SlimlensError(f"step {index + 1} ({recipe_step.step}): {exc}") from None


def check_fits(model: nn.Module, data: CompressionData) -> None:
    """Fail in one line, before any work, when a user's model cannot take the data's inputs or give its outputs."""
    shape = (8, *data.input_shape)
    try:
        with torch.inference_mode():
            out = model(data.example_input(8))
    except Exception as exc:
        raise SlimlensError(f"{data.model_name} cannot take {data.train.name} "
                            f"inputs of shape {shape}: {first_line(exc, 200)}; give a model for 1x28x28 digits") from None
    classes = 1 if data.task == "binary-classification" else int(data.train.labels.max()) + 1
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if not isinstance(out, torch.Tensor):
            fix = "have the function return a module whose forward returns that tensor alone (e.g. the logits of a tuple or dict)"
        elif out.dim() == 1 and classes == 1:
            fix = "return it as (batch, 1), e.g. out.unsqueeze(1)"
        else:
            fix = f"give a model with {classes} output{'s' if classes > 1 else ''}"
        raise SlimlensError(f"{data.model_name} returns {got} for inputs {shape}; {data.task} on this data needs (batch, {classes}): {fix}")
    if data.task == "binary-classification" and not looks_like_probability(out):
        # scoring thresholds the output at 0.5 and fine-tuning uses binary cross-entropy: both need a probability
        raise SlimlensError(f"{data.model_name} returns values from {out.min().item():.3g} to {out.max().item():.3g}; binary classification "
                            f"on {data.train.name} needs the probability of the positive class: end the model with torch.sigmoid")


UNTRAINED_MARGIN = 0.05  # accuracy within this of always answering the most common class counts as untrained


def original_warnings(data: CompressionData, metrics: dict) -> list[str]:
    """What is wrong with the original itself: a classifier no better than always answering its most common class."""
    if not data.labelled or "accuracy" not in metrics:
        return []
    majority = float(torch.bincount(data.test.labels).max()) / len(data.test.labels)
    if metrics["accuracy"] > majority + UNTRAINED_MARGIN:
        return []
    fix = "pass the --weights it was trained to" if "builder" in data.source else "check or retrain its weights"
    return [f"{data.model_name} scores {metrics['accuracy']:.3f} accuracy on the test split, no better than always answering its most "
            f"common class ({majority:.3f}): its weights look untrained or not loaded, so its variants' figures mean nothing; {fix}"]


def run(
    model: nn.Module | str,
    recipe: Recipe | str | Path | list,
    data: CompressionData | str | None = None,
    out_dir: str | Path | None = None,
    progress: Progress = lambda message: None,
    command: str | None = None,
    export: bool = True,
    exporter: str = "auto",
    seed: int = 0,
) -> RunResult:
    """Apply ``recipe`` (a Recipe, preset name, TOML path or list of step dicts) to ``model`` on ``data``.

    Saves every variant under ``out_dir/variants/`` and writes ``out_dir/results.json``. ``out_dir`` must
    be new or empty; the run is built in a folder beside it and renamed into place only when complete.
    When None, a temporary folder that the caller owns and may delete. Returns the variants, original
    first, with ``.results``.
    ``export`` adds an ONNX export of every PyTorch variant (``exporter``: "auto", "dynamo" or "legacy");
    ``seed`` is used when ``data`` is given as a name.

    >>> variants = run("seed-cnn", "int8", out_dir="/tmp/seed-cnn-int8")  # doctest: +SKIP
    >>> [v.name for v in variants], variants.results["variants"][0]["metrics"]["accuracy"]  # doctest: +SKIP
    """
    model, recipe, data = _resolve(model, recipe, data, seed)
    check_families(recipe, data)
    check_layer_names(recipe, model, data)
    check_recurrent(recipe, model, data)
    if out_dir is None:
        return _run_in_workspace(Path(tempfile.mkdtemp(prefix="slimlens-run-")), model, recipe, data, progress, command, export, exporter)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SlimlensError(f"{out} is a file; give run() a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        # old variants would mix with the new ones and no longer match results.json
        raise SlimlensError(f"{out} is not empty; give run() a new or empty folder (slimlens compress --force replaces one)")
    # Built beside out_dir and renamed into place when complete: a run that fails or is interrupted
    # leaves no half-written out_dir whose results.json and variants disagree.
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(out)
    try:
        result = _run_in_workspace(staged, model, recipe, data, progress, command, export, exporter)
        move_into_place(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    for variant in result:
        if variant.artifact is not None and Path(variant.artifact).is_relative_to(staged):
            variant.artifact = out / Path(variant.artifact).relative_to(staged)
    result.out_dir = out
    return result


def _run_in_workspace(out: Path, model: nn.Module, recipe: Recipe, data: CompressionData, progress: Progress,
                      command: str | None, export: bool, exporter: str) -> RunResult:
    # Steps write intermediate files (ONNX exports, calibration copies) to fresh temporary folders
    # and each variant's save() copies what it needs into out/variants; pointing tempfile at one
    # work folder for the run lets all of that go when the run ends, instead of piling up in /tmp.
    work = Path(tempfile.mkdtemp(prefix="slimlens-work-"))
    previous_tempdir = tempfile.tempdir
    tempfile.tempdir = str(work)
    try:
        return _run_into(out, model, recipe, data, progress, command, export, exporter)
    finally:
        tempfile.tempdir = previous_tempdir
        shutil.rmtree(work, ignore_errors=True)


def _run_into(out: Path, model: nn.Module, recipe: Recipe, data: CompressionData, progress: Progress, command: str | None,
              export: bool, exporter: str) -> RunResult:
    variants_dir = out / "variants"
    variants_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(data.seed)
    started = time.perf_counter()
    recorder = _Recorder(data, model, variants_dir, out, export, exporter, progress)
    progress(f"original: measuring {data.model_name}")
    recorder.add(_Output(TorchVariant(name="original", source=dict(data.source), module=model), model, chains=True),
                 "original", [], 0.0)

    current, chain_steps, timings = model, [], []
    current_entry = recorder.entries[0]  # the variant the next step starts from: its metrics and sizes
    run_warnings = original_warnings(data, current_entry["metrics"])
    for warning in run_warnings:
        progress(f"warning: original: {warning}")
    for index, recipe_step in enumerate(recipe.steps):
        progress(f"[{index + 1}/{len(recipe.steps)}] {recipe_step.label} ({recipe_step.step})")
        start = time.perf_counter()
        search = None
        if recipe_step.families is not None and data.family not in recipe_step.families:
            reason = f"runs on {', '.join(recipe_step.families)} models only, not {data.family}"
            progress(f"{recipe_step.label}: skipped ({reason})")
            timings.append({"step": recipe_step.label, "seconds": 0.0, "skipped": reason})
            continue
        try:
            if recipe_step.max_drop is not None:
                output, config, search = _search(recipe_step, current, data, model, recorder.base_metrics, progress)
            else:
                config = recipe_step.config
                output = _call(recipe_step, config, current, data, model, progress)
        except SlimlensError as exc:
            if not recipe_step.optional:
                raise SlimlensError(f"step {index + 1} ({recipe_step.step}): {exc}") from None
            progress(f"{recipe_step.label}: skipped ({exc})")
            timings.append({"step": recipe_step.label, "seconds": round(time.perf_counter() - start, 2), "skipped": str(exc)})
            continue
        seconds = time.perf_counter() - start
        step_record = {"step": recipe_step.step, **dataclasses.asdict(config)}
        timings.append({"step": recipe_step.label, "seconds": round(seconds, 2), **({"search": search} if search else {})})
        outputs = _outputs(output, recipe_step, data.source, current)
        made = []
        for i, (name, produced) in enumerate(outputs):
            extra = {"search": search} if search and i == 0 else {}
            # A step's own record of what it did (backend, exporter) is kept, on top of its settings.
            own = produced.variant.steps[-1] if produced.variant.steps else {}
            # A step that trains several variants one after another (distill: student, then alone) times each.
            produced_in = own.get("training_seconds", seconds)
            made.append(recorder.add(produced, name, chain_steps + [{**step_record, **own}], produced_in, extra))
        warnings = _step_warnings(data, recipe_step, current_entry["metrics"], made) + _size_warnings(recipe_step.step, made, current_entry, recorder.entries)
        if recipe_step.step in ("prune-unstructured", "weight-sharing"):  # a user's layer the step cannot treat stays as it was
            left = dense_weights_warning(outputs[0][1].variant.module) if hasattr(outputs[0][1].variant, "module") else None
            warnings += [left] if left else []
        for warning in warnings:
            progress(f"warning: {recipe_step.label}: {warning}")
        if warnings:
            timings[-1]["warnings"] = warnings
        first = outputs[0][1]
        if first.chains:
            current, chain_steps = first.variant.module, chain_steps + [step_record]
            current_entry = made[0]

    extra: dict[str, Any] = {}
    if recipe.sensitivity is not None:
        from compress.sensitivity import sensitivity

        progress("per-layer sensitivity of the original")
        extra["sensitivity"] = sensitivity(model, data, recipe.sensitivity, progress)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "model": data.model_name,
        "task": data.task,
        "family": data.family,
        "input_shape": list(data.input_shape),  # what `slimlens bench DIR` times a user's model on
        "primary_metric": data.primary_metric,
        "higher_is_better": data.higher_is_better,
        "recipe": recipe.to_dict(),
        "command": command,
        "environment": environment(torch.get_num_threads(), data.seed,
                                   threads_for="training, calibration and evaluation (each latency record names its timing threads)"),
        "timings": {"steps": timings, "total_seconds": round(time.perf_counter() - started, 2)},
        "variants": recorder.entries,
        **({"warnings": run_warnings} if run_warnings else {}),
        **extra,
    }
    write_results(results, out / "results.json")
    return RunResult(recorder.variants, results, out)
