"""Errors a user can act on; the CLI prints their message as one line and exits non-zero."""

import re


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``"Type: first line"`` of the error behind ``exc`` (its innermost cause, colour codes dropped), for one-line reports."""
    while exc.__cause__ is not None:  # wrappers (the dynamo exporter, torch.fx) hide the informative error
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"[:limit]


class SlimlensError(Exception):
    """Base class for every error slimlens reports to a user instead of a traceback."""


class WeightsError(SlimlensError):
    """A weights file is missing, truncated, corrupt, or does not match its card."""


class DataError(SlimlensError):
    """A dataset cannot be read: unknown name, missing folder, wrong split."""


class UnknownModelError(SlimlensError):
    """A model name that is not in the zoo."""


class MetricError(SlimlensError):
    """A model's outputs cannot be scored: NaN or infinite values where the metric needs numbers."""
