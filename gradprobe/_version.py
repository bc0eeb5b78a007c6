"""The package version: the one place it is written (``pyproject.toml`` reads it from here), so that
knowing it costs no metadata lookup when a script starts."""

__version__ = "0.1.0"
