"""slimlens model zoo: trained CNN, LSTM, GAN, autoencoder and MLP models on bundled MNIST digits.

>>> import zoo
>>> zoo.list_models()[:3]
['seed-cnn', 'lenet5', 'resnet-mnist']
>>> model = zoo.load("seed-cnn")          # eval mode, weights checked against the card's sha256
>>> zoo.card("seed-cnn").metrics["accuracy"] > 0.96
True
>>> image, label = zoo.dataset("mnist", split="test")[0]
"""

from zoo.cards import ModelCard, card
from zoo.datasets import dataset
from zoo.errors import DataError, MetricError, SlimlensError, UnknownModelError, WeightsError
from zoo.evaluate import evaluate
from zoo.loading import load
from zoo.models.dcgan import latents
from zoo.registry import build, list_models, spec

__all__ = [
    "DataError",
    "ModelCard",
    "SlimlensError",
    "MetricError",
    "UnknownModelError",
    "WeightsError",
    "build",
    "card",
    "dataset",
    "evaluate",
    "latents",
    "list_models",
    "load",
    "spec",
]
