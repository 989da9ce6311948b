"""Errors of measuring and reporting that a user can act on (the CLI prints them as one line, exit 2)."""

from zoo.errors import SlimlensError


class ReportError(SlimlensError):
    """A results file cannot be read, runs cannot be compared, or a report cannot be written."""


class DeviceError(SlimlensError):
    """An unknown device was named, or a device was asked for that this machine does not have."""
