"""Rich views of a run that the report renderers provide: the notebook summary and the figures.

The store does not depend on the renderers: they plug in from their side, as
the ``gradprobe.views`` entry points of the installed package (see
``pyproject.toml``), looked up when a view is first asked for.
"""

from __future__ import annotations

from importlib import metadata
from typing import Callable

from gradprobe.errors import GradprobeError

GROUP = "gradprobe.views"


def view(name: str) -> Callable:
    """The installed view ``name`` (``html``: a run's notebook summary, ``figures``: its figures)."""
    for entry in metadata.entry_points(group=GROUP, name=name):
        return entry.load()
    raise GradprobeError(f"no '{name}' view of runs is installed: gradprobe's reports provide it "
                         "(reinstall gradprobe with pip)")
