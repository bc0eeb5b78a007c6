"""Exceptions gradprobe raises for problems the user can fix."""


class GradprobeError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class RunFormatError(GradprobeError):
    """A run directory or one of its files cannot be read."""
