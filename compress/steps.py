"""The step registry: a recipe names steps; each maps to a frozen config class and a function.

A step function reads like torchao's ``quantize_(model, config)``::

    def prune_structured(model: nn.Module, config: PruneStructuredConfig, data: CompressionData,
                         progress=...) -> nn.Module | Variant

It never changes the model it is given. A step returning an ``nn.Module`` (prune, distill, QAT,
weight sharing) can be followed by more steps; a step returning a ``Variant`` (an int8 ONNX file,
a compressed-storage artifact) ends its branch of the recipe.

A config class may name ``strength_field`` (e.g. "ratio"): the pipeline's accuracy-aware search
then tries values of that field and keeps the most compressed result within a tolerated drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from zoo.errors import SlimlensError


@dataclass(frozen=True)
class Step:
    """A registered step: its recipe name, config class and function."""

    name: str
    config_class: type
    function: Callable[..., Any]
    families: tuple[str, ...] | None = None  # the model families it can compress; None: every family


_STEPS: dict[str, Step] = {}


def register_step(name: str, config_class: type, families: tuple[str, ...] | None = None
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``function`` as recipe step ``name`` configured by ``config_class`` (for ``families`` only, if given)."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        _STEPS[name] = Step(name, config_class, function, families)
        return function

    return wrap


def get_step(name: str) -> Step:
    """The registered step called ``name``."""
    _import_steps()
    try:
        return _STEPS[name]
    except KeyError:
        raise SlimlensError(f"unknown recipe step {name!r}; known steps: {', '.join(sorted(_STEPS))}") from None


def apply(model: Any, config: Any, data: Any, progress: Callable[[str], None] = lambda message: None) -> Any:
    """Run the step that ``config``'s class configures: ``apply(model, StaticInt8Config(), data_for("seed-cnn"))``.

    ``data`` is a ``CompressionData`` or a zoo model name. The model is never changed; the result is a
    new module (to compress further) or a ``Variant`` (a deployable artifact), as the step returns it.
    """
    _import_steps()
    step = next((s for s in _STEPS.values() if type(config) is s.config_class), None)
    if step is None:
        raise SlimlensError(f"{type(config).__name__} configures no step; give one of: "
                            f"{', '.join(sorted(s.config_class.__name__ for s in _STEPS.values()))}")
    if isinstance(data, str):
        from compress.context import data_for

        data = data_for(data)
    return step.function(model, config, data, progress=progress)


def describe_step(name: str) -> dict[str, Any]:
    """What a recipe may write for step ``name``: its config's docstring, the families it takes, and each setting's default."""
    import dataclasses

    step = get_step(name)
    settings = {f.name: f.default if f.default is not dataclasses.MISSING else None
                for f in dataclasses.fields(step.config_class)}
    return {"step": name, "about": (step.config_class.__doc__ or "").strip().splitlines()[0],
            "families": list(step.families) if step.families else None, "settings": settings}


def list_steps() -> list[str]:
    """Names of all registered steps."""
    _import_steps()
    return sorted(_STEPS)


def _import_steps() -> None:
    import importlib

    for module in ("compress.quantize", "compress.prune", "compress.sharing", "compress.sparse", "compress.distill", "compress.export"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing dependency inside a step module is a real error
                raise
