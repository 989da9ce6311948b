"""A card for a user's own network (``package.module:function``), so ``slimlens explain`` treats it as it treats a zoo model.

A zoo model's card says what its outputs mean; a user's network says nothing, so this card is
built from the dataset it was trained on (``--data``) and from its own outputs on the test split.
"""

from __future__ import annotations

import torch
from torch import nn

import zoo
from explain.errors import ExplainError
from explain.methods import conv_layers, looks_like_probability
from zoo.cards import ModelCard
from zoo.datasets import DATASETS
from zoo.errors import first_line
from zoo.registry import DIGITS
from zoo.weights import weights_sha256

BINARY_CLASSES = ["digit<5", "digit>=5"]  # mnist-ge5's labels, named as the zoo's simplenet names them
PROBE = 256  # test images whose outputs decide what the outputs are: enough for a trained model's logits to leave [0, 1]


def user_card(builder: str, data: str | None, module: nn.Module) -> ModelCard:
    """The card of ``module``, built by ``builder`` and trained on zoo dataset ``data``; one-line errors when it cannot be explained."""
    if data is None:
        raise ExplainError(f"{builder} is your own model: name the dataset it was trained on with --data ({' or '.join(DATASETS)})")
    if data not in DATASETS:
        raise ExplainError(f"--data {data} is not a bundled dataset; give one of {', '.join(DATASETS)}")
    test = zoo.dataset(data, "test")
    try:
        with torch.no_grad():
            outputs = module.eval()(test.images[:PROBE])
    except Exception as exc:  # the user's own forward: a wrong input size, or any bug of its own
        raise ExplainError(f"{builder} raised an error on {PROBE} of {data}'s 1x28x28 test digits ({first_line(exc, 200)}); "
                           "fix its forward, or explain a model built for these digits") from None
    if not isinstance(outputs, torch.Tensor):
        raise ExplainError(f"{builder} returns {type(outputs).__name__}, not a tensor of class scores; return the logits (batch, classes)")
    classes = 2 if data == "mnist-ge5" else 10
    width = outputs.shape[1] if outputs.dim() == 2 else None
    if width not in (classes, 1 if data == "mnist-ge5" else classes):
        dims = ["batch", *map(str, outputs.shape[1:])]
        shape = ", ".join(dims) + ("," if len(dims) == 1 else "")  # Python's own spelling of a 1-tuple: (batch,)
        raise ExplainError(f"{builder} gives outputs of shape ({shape}) on {data}, which has {classes} classes; "
                           f"it must give (batch, {classes})" + (" or (batch, 1)" if data == "mnist-ge5" else ""))
    bad = int((~torch.isfinite(outputs)).any(1).sum())
    if bad:  # NaN scores would flow into every map, trust figure and verdict, and into explain.json as bare NaN
        raise ExplainError(f"{builder} gives NaN or infinite outputs for {bad} of {len(outputs)} {data} test digits; "
                           "check its weights (a diverged training run leaves NaN in them) and explain a model whose outputs are finite")
    single = width == 1
    return ModelCard(
        name=builder,
        family=zoo_family(module),
        task="binary-classification" if single else "classification",
        description=f"your model {builder}(), trained on {data}",
        dataset={"name": data},
        input={"shape": [1, 28, 28]},
        class_names=BINARY_CLASSES if data == "mnist-ge5" else list(DIGITS),
        params=sum(p.numel() for p in module.parameters()),
        metrics={},
        primary_metric="accuracy",
        higher_is_better=True,
        weights={"sha256": weights_sha256(module)},
        training={},
        extra={"builder": builder, "output": ("probability" if looks_like_probability(outputs) else "logit") if single else "logits"},
    )


def zoo_family(module: nn.Module) -> str:
    """The zoo family ``module`` would have: cnn with a convolution, lstm with a recurrent layer and no convolution, else mlp."""
    # the family picks the explanation: an LSTM's maps are read per time step, taken as the input's rows, and
    # Grad-CAM is a default only for a cnn. Behind a convolution (a CRNN) the recurrence runs over feature-map
    # positions, not input rows, and the convolution gives Grad-CAM its map.
    if conv_layers(module):
        return "cnn"
    return "lstm" if any(isinstance(m, nn.RNNBase) for m in module.modules()) else "mlp"
