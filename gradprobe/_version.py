"""The package version, read from the installed metadata."""

from importlib import metadata

try:
    __version__ = metadata.version("gradprobe")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
