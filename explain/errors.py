"""Errors an explanation reports to a user: one line each, exit code 2 from the CLI."""

from __future__ import annotations

from zoo.errors import SlimlensError


class ExplainError(SlimlensError):
    """An explanation cannot be computed as asked: bad method, input, index or output folder."""


class UnknownMethodError(ExplainError):
    """A method name that explain/ does not know."""


class MethodNotApplicableError(ExplainError):
    """A known method that cannot run on this model, e.g. Grad-CAM on a model without convolutions."""


class GradientsUnavailableError(MethodNotApplicableError):
    """A gradient method asked of a model with no gradients (int8, ONNX Runtime) and no float stand-in."""
