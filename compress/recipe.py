"""Recipes: an ordered list of compression steps with their settings, from TOML, a preset name or Python.

A recipe file::

    description = "prune half the channels, then distil"

    [[steps]]
    step = "prune-structured"     # a registered step (``compress.steps.list_steps()``)
    ratio = 0.5                   # any field of the step's config class
    max_drop = 0.5                # optional: search the step's strength, keep the most compressed
    search = [0.3, 0.5, 0.7]      #   variant within this metric loss (points for accuracy); weakest first

    [sensitivity]                 # optional: per-layer sensitivity of the original (or `sensitivity = true`)
    ratios = [0.5, 0.75, 0.9]

    [[steps]]
    step = "distill"
    name = "pruned-distilled"     # optional: the variant's name (default: the step's own name for it)
    optional = true               # optional: if the step does not apply to the model, record why and go on
    families = ["cnn", "gan"]     # optional: run only on models of these families, recorded as skipped on others

Every mistake (unknown step, unknown setting, wrong type, value out of range) is one
``SlimlensError`` line naming the file, the step and the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.steps import get_step, list_steps
from zoo.errors import SlimlensError

PRESETS_DIR = Path(__file__).parent / "presets"
RESERVED = ("step", "name", "max_drop", "search", "optional", "families")
FAMILIES = ("cnn", "lstm", "gan", "autoencoder", "mlp")
# Strengths the accuracy-aware search tries when neither the recipe nor the config class names any (weakest first).
DEFAULT_SEARCH = {
    "ratio": (0.3, 0.5, 0.6, 0.7, 0.8),
    "sparsity": (0.5, 0.7, 0.8, 0.9, 0.95),
    "bits": (8, 6, 5, 4, 3),
    "width": (0.5, 0.375, 0.25, 0.125),
}


@dataclass(frozen=True)
class RecipeStep:
    """One step of a recipe: the registered step, its config, and an optional accuracy-aware search."""

    step: str
    config: Any
    name: str | None = None  # the variant's name; the step's name when None
    max_drop: float | None = None  # tolerated loss of the primary metric (points for accuracy-like metrics)
    search: tuple | None = None  # strength values to try, weakest first; the config class's defaults when None
    optional: bool = False  # a step that does not apply to the model (e.g. static int8 of an LSTM) is recorded and skipped
    families: tuple[str, ...] | None = None  # run only on these model families; None: on every family

    @property
    def label(self) -> str:
        """The name its variant gets."""
        return self.name or self.step

    def to_dict(self) -> dict[str, Any]:
        """The step as recipe data, every setting resolved (defaults included)."""
        out: dict[str, Any] = {"step": self.step, **_plain(dataclasses.asdict(self.config))}
        if out.get("name") == "":  # a config's unset name (half_precision's) is no name; "" is refused when read back
            del out["name"]
        if self.name:
            out["name"] = self.name
        if self.optional:
            out["optional"] = True
        if self.families is not None:
            out["families"] = list(self.families)
        if self.max_drop is not None:
            out.pop(type(self.config).strength_field)  # each candidate sets it; the variant's own steps record the one kept
            out["max_drop"] = self.max_drop
            out["search"] = list(self.search_values())
        return out

    def search_values(self) -> tuple:
        """The strengths an accuracy-aware search tries, weakest first."""
        if self.search is not None:
            return tuple(self.search)
        return self.default_search_values()

    def default_search_values(self) -> tuple:
        """The strengths the config class (or DEFAULT_SEARCH) names for a search, weakest first."""
        config_class = type(self.config)
        values = getattr(config_class, "search_values", None) or getattr(config_class, "strength_values", None)
        return tuple(values or DEFAULT_SEARCH.get(getattr(config_class, "strength_field", ""), ()))


@dataclass(frozen=True)
class Recipe:
    """An ordered list of steps; ``origin`` says where it was read from (a preset name, a file, or "python")."""

    steps: tuple[RecipeStep, ...]
    description: str = ""
    origin: str = "python"
    sensitivity: Any = None  # a compress.sensitivity.SensitivityConfig: measure the original's per-layer sensitivity

    def to_dict(self) -> dict[str, Any]:
        """The exact recipe, settings resolved, as written into results.json."""
        out = {"origin": self.origin, "description": self.description, "steps": [s.to_dict() for s in self.steps]}
        if self.sensitivity is not None:
            out["sensitivity"] = _plain(dataclasses.asdict(self.sensitivity))
        return out

    @classmethod
    def from_steps(cls, steps: list[dict[str, Any]], description: str = "", origin: str = "python",
                   sensitivity: bool | dict[str, Any] = False) -> "Recipe":
        """Build a recipe from ``[{"step": "distill", "epochs": 5}, ...]``, validated like a TOML file."""
        parsed = tuple(parse_step(s, i, origin) for i, s in enumerate(steps))
        _check_names(parsed, origin)
        return cls(parsed, description, origin, parse_sensitivity(sensitivity, origin))


RESERVED_NAMES = ("original", "original-onnx")


MAX_NAME_LENGTH = 64


def _check_names(steps: tuple[RecipeStep, ...], origin: str) -> None:
    """Refuse a reserved variant name, or one name given to two steps that can run on the same model."""
    for i, step in enumerate(steps):
        if step.name in RESERVED_NAMES:
            raise SlimlensError(f"{origin}: step {i + 1} ({step.step}): name {step.name!r} is the uncompressed model's; choose another")
        for j, other in enumerate(steps[:i]):
            overlap = step.families is None or other.families is None or set(step.families) & set(other.families)
            if step.name is not None and step.name == other.name and overlap:
                raise SlimlensError(f"{origin}: steps {j + 1} and {i + 1} are both named {step.name!r}; give each its own name "
                                    "(one name may repeat only across steps for different families)")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def list_presets() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_recipe(recipe: str | Path) -> Recipe:
    """A preset by name (``"int8"``) or a TOML file by path, parsed and validated."""
    text_name = str(recipe)
    path = Path(recipe)
    if not path.suffix and not path.exists():
        preset = PRESETS_DIR / f"{text_name}.toml"
        if not preset.is_file():
            raise SlimlensError(f"unknown recipe {text_name!r}: not a file, and the presets are {', '.join(list_presets())}")
        return parse_recipe(preset.read_text(), origin=f"preset:{text_name}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SlimlensError(f"recipe file {path} is not UTF-8 text; give a TOML file") from None
    except FileNotFoundError:
        raise SlimlensError(f"recipe file {path} not found; give a TOML file or one of the presets: {', '.join(list_presets())}") from None
    except OSError as exc:
        raise SlimlensError(f"recipe file {path} cannot be read ({exc.strerror})") from None
    return parse_recipe(text, origin=str(path))


def parse_recipe(text: str, origin: str = "<string>") -> Recipe:
    """Parse and validate recipe TOML ``text``; ``origin`` names it in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SlimlensError(f"{origin}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - {"description", "steps", "sensitivity"})
    if unknown:
        raise SlimlensError(f"{origin}: unknown top-level key {unknown[0]!r}; a recipe has 'description', [sensitivity] and [[steps]]")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise SlimlensError(f"{origin}: a recipe needs at least one [[steps]] table with step = \"name\"")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise SlimlensError(f"{origin}: description must be a string")
    return Recipe.from_steps(steps, description, origin, doc.get("sensitivity", False))


def parse_sensitivity(value: bool | dict[str, Any], origin: str) -> Any:
    """The SensitivityConfig a recipe asks for (``true`` or a table of settings), or None."""
    if value is False:
        return None
    from compress.sensitivity import SensitivityConfig

    if value is True:
        return SensitivityConfig()
    if not isinstance(value, dict):
        raise SlimlensError(f"{origin}: sensitivity must be true, false or a table of settings")
    return _config(SensitivityConfig, value, f"{origin}: sensitivity", "sensitivity")


def _config(config_class: type, table: dict[str, Any], where: str, what: str) -> Any:
    """``config_class`` built from ``table``'s settings, each checked against the field's type."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    settings = {}
    for key, value in table.items():
        if key in RESERVED and what != "sensitivity":  # the step-level keys belong to steps only
            continue
        if key not in fields:
            known = ", ".join(dict.fromkeys([*fields, *RESERVED[1:]])) if what != "sensitivity" else ", ".join(fields)
            raise SlimlensError(f"{where}: unknown setting {key!r}; {what} takes: {known}")
        settings[key] = _coerce(value, hints[key], f"{where}: setting {key!r}")
    try:
        return config_class(**settings)
    except (ValueError, TypeError, SlimlensError) as exc:  # config classes validate with any of these
        raise SlimlensError(f"{where}: {exc}") from None


def parse_step(table: Any, index: int, origin: str) -> RecipeStep:
    """Validate one ``[[steps]]`` table against its step's config class."""
    where = f"{origin}: step {index + 1}"
    if not isinstance(table, dict):
        raise SlimlensError(f"{where}: must be a table with step = \"name\"")
    name = table.get("step")
    if not isinstance(name, str):
        raise SlimlensError(f"{where}: missing step = \"name\"; known steps: {', '.join(list_steps())}")
    try:
        registered = get_step(name)
    except SlimlensError as exc:
        raise SlimlensError(f"{where}: {exc}") from None
    where = f"{origin}: step {index + 1} ({name})"
    config_class = registered.config_class
    label = table.get("name")
    if label is not None and (not isinstance(label, str) or not label.replace("-", "").replace("_", "").isalnum()):
        raise SlimlensError(f"{where}: name must be letters, digits, '-' or '_', got {label!r}")
    if label is not None and len(label) > MAX_NAME_LENGTH:  # it names files, and a file name has a length limit
        raise SlimlensError(f"{where}: name is {len(label)} characters long; give at most {MAX_NAME_LENGTH}")
    config = _config(config_class, table, where, name)
    if label is not None and "name" in {f.name for f in dataclasses.fields(config_class)}:
        config = dataclasses.replace(config, name=label)  # a config's own `name` (its variant's) is the recipe's name
    max_drop, search = table.get("max_drop"), table.get("search")
    if max_drop is not None:
        max_drop = _coerce(max_drop, float, f"{where}: setting 'max_drop'")
        if not 0 <= max_drop < math.inf:  # NaN fails too: every candidate would read as past it
            raise SlimlensError(f"{where}: max_drop must be a finite number >= 0 (the metric loss you tolerate), got {max_drop}")
    if search is not None and max_drop is None:
        raise SlimlensError(f"{where}: 'search' needs 'max_drop' (the tolerated metric loss)")
    if search is not None and not isinstance(search, list):
        raise SlimlensError(f"{where}: search must be a list of values, got {search!r}")
    optional = table.get("optional", False)
    if not isinstance(optional, bool):
        raise SlimlensError(f"{where}: setting 'optional' must be true or false, got {optional!r}")
    families = table.get("families")
    if families is not None:
        if not isinstance(families, list) or not families or any(f not in FAMILIES for f in families):
            hint = ("; a model of your own takes the family a zoo model like it has (cnn, lstm or mlp), so 'custom' names none"
                    if isinstance(families, list) and "custom" in families else "")
            raise SlimlensError(f"{where}: families must be a list drawn from {', '.join(FAMILIES)}, got {families!r}{hint}")
        families = tuple(families)
    step = RecipeStep(name, config, label, max_drop, tuple(search) if search is not None else None, optional, families)
    if max_drop is not None:
        _check_search(step, config_class, typing.get_type_hints(config_class), where)
        strength = config_class.strength_field
        if strength in table:  # every candidate replaces it, so the value given would be recorded but never run
            raise SlimlensError(f"{where}: {strength} = {table[strength]!r} is not used when max_drop searches {strength} over "
                                f"{list(step.search_values())}; remove {strength}, or remove max_drop to run {strength} = {table[strength]!r} alone")
    _check_applies(step, table, where)
    return step


def _check_applies(step: RecipeStep, table: dict[str, Any], where: str) -> None:
    """Refuse a setting the step would ignore: one that applies only when another setting has a value it never takes."""
    defaults = {f.name: f.default for f in dataclasses.fields(step.config)}
    for key, (field, needed) in getattr(type(step.config), "applies_only_with", {}).items():
        if key not in table or table[key] == defaults.get(key):  # a resolved recipe (results.json) lists every default
            continue
        taken = {getattr(step.config, field)}
        if step.max_drop is not None and getattr(type(step.config), "strength_field", None) == field:
            taken = set(step.search_values())  # every candidate replaces the step's own value with one of these
        if needed not in taken:
            raise SlimlensError(f"{where}: {key} applies only with {field} = {needed!r}, and this step uses "
                                f"{' / '.join(repr(v) for v in sorted(taken, key=str))}; remove {key} or set {field} = {needed!r}")


def _check_search(step: RecipeStep, config_class: type, hints: dict, where: str) -> None:
    strength = getattr(config_class, "strength_field", None)
    if strength is None:
        raise SlimlensError(f"{where}: max_drop given, but {step.step} has no strength to search")
    if not step.search_values():
        raise SlimlensError(f"{where}: max_drop given, but no values to try; add search = [...] of {strength!r} values")
    for value in step.search_values():
        _coerce(value, hints[strength], f"{where}: search value for {strength!r}")
        try:
            dataclasses.replace(step.config, **{strength: value})
        except (ValueError, TypeError, SlimlensError) as exc:
            raise SlimlensError(f"{where}: search value {value!r}: {exc}") from None
    _check_order(step, where)


def _check_order(step: RecipeStep, where: str) -> None:
    """Refuse numeric ``search`` values that do not go weakest to strongest, each once."""
    # The search stops at the first value past max_drop, taking every later one to be stronger:
    # in another order, weaker values would go untried.
    values, defaults = step.search_values(), step.default_search_values()
    field = type(step.config).strength_field
    numeric = all(_is_number(v) for v in values)  # numbers are checked for order below, which catches a repeat too
    if not numeric and len(set(map(repr, values))) < len(values):  # ["minmax", "minmax"] would pay for one candidate twice
        raise SlimlensError(f"{where}: search lists a {field} more than once, got {list(values)}; give each value once")
    if step.search is None or len(values) < 2 or len(defaults) < 2 or not all(_is_number(v) for v in (*values, *defaults)):
        return
    rising = defaults[-1] > defaults[0]  # the defaults are weakest first, so they tell which way is stronger
    if not all((b > a) if rising else (b < a) for a, b in zip(values, values[1:])):
        raise SlimlensError(f"{where}: search must go from weakest to strongest {field}, each value once "
                            f"({'rising' if rising else 'falling'}, like {list(defaults)}), got {list(values)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against a config field's type (an int is a valid float; a list a valid tuple)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:  # only a Python-built recipe can say None; TOML has no null
            return None
        for option in args:
            try:
                return _coerce(value, option, where)
            except SlimlensError:
                continue
        raise SlimlensError(f"{where} must be {_type_name(annotation)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise SlimlensError(f"{where} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise SlimlensError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple such as (name, fraction)
            if len(value) != len(args):
                raise SlimlensError(f"{where} must be a list of {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value] if item is not Any else list(value)
        return tuple(items) if origin is tuple else items
    if annotation is type(None):
        raise SlimlensError(f"{where} cannot be given in TOML (it is unset by default)")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
            return value
        raise SlimlensError(f"{where} must be {_type_name(annotation)}, got {value!r}")
    return value  # an annotation we cannot check (Any, a dict): the config class validates it


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if annotation in names:
        return names[annotation]
    return str(annotation).replace("typing.", "")
