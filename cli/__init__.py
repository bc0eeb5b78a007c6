"""The ``gradprobe`` command line (installed as ``gradprobe.cli``)."""

from gradprobe.cli.app import app, main

__all__ = ["app", "main"]
