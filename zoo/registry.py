"""The model registry: one plain builder function per zoo model, registered by a small decorator.

Modelled on torchvision's ``register_model``: a builder returns an untrained ``nn.Module``; the
static facts about a model (family, task, dataset, input, training recipe) are registered with it,
and the measured facts live in its card (see ``zoo.cards``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from zoo.errors import UnknownModelError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
DIGITS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class TrainRecipe:
    """How a zoo model is trained: the hyperparameters its card records and ``zoo train`` replays."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    augment: bool = False
    seed: int = 0
    quick_epochs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a zoo model, known before it is trained."""

    name: str
    builder: Callable[[], nn.Module]
    family: str  # cnn, lstm, gan, autoencoder, mlp
    task: str  # classification, binary-classification, generation, discrimination, reconstruction
    dataset: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    recipe: TrainRecipe
    description: str
    primary_metric: str
    higher_is_better: bool = True
    trained_with: str | None = None  # a GAN half is trained together with its partner


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    task: str,
    recipe: TrainRecipe,
    description: str,
    primary_metric: str,
    dataset: str = "mnist",
    input_shape: tuple[int, ...] = (1, 28, 28),
    class_names: tuple[str, ...] = tuple(DIGITS),
    higher_is_better: bool = True,
    trained_with: str | None = None,
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Register ``builder`` under ``name`` with the facts the model card starts from."""

    def wrap(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"zoo model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=builder,
            family=family,
            task=task,
            dataset=dataset,
            input_shape=input_shape,
            class_names=class_names,
            recipe=recipe,
            description=description,
            primary_metric=primary_metric,
            higher_is_better=higher_is_better,
            trained_with=trained_with,
        )
        return builder

    return wrap


def list_models() -> list[str]:
    """Names of every zoo model, in registration order."""
    _import_models()
    return list(_REGISTRY)


def spec(name: str) -> ModelSpec:
    """The registered facts of zoo model ``name``."""
    _import_models()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"no zoo model named {name!r}; `slimlens zoo list` shows the {len(_REGISTRY)} there are") from None


def build(name: str) -> nn.Module:
    """A fresh, untrained instance of zoo model ``name``."""
    return spec(name).builder()


def _import_models() -> None:
    # Importing the modules runs their decorators; kept lazy so `import zoo` stays cheap.
    import zoo.models  # noqa: F401
