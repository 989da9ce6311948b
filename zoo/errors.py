"""Errors a user can act on; the CLI prints their message as one line and exits non-zero."""


class SlimlensError(Exception):
    """Base class for every error slimlens reports to a user instead of a traceback."""


class WeightsError(SlimlensError):
    """A weights file is missing, truncated, corrupt, or does not match its card."""


class DataError(SlimlensError):
    """A dataset cannot be read: unknown name, missing folder, wrong split."""


class UnknownModelError(SlimlensError):
    """A model name that is not in the zoo."""
