"""Names for Keras and TensorFlow variables, taken from their paths.

Keras variables are named as :mod:`gradprobe.recording.keras_paths` says
(relative to their root model, prefixed with the root's name when there are
several). A plain ``tf.Variable`` owned by no model keeps its name without
the ``:0`` suffix, grouped by its first path component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import keras

from gradprobe.recording.keras_paths import first_component, labelled, live_roots, variable_names, variable_path


@dataclass(frozen=True)
class LayerName:
    """Where a variable lives: its name, its group and its depth order."""

    name: str
    group: str
    order: tuple[int, int]


def variable_device(variable: Any) -> str:
    """The device a (Keras or TensorFlow) variable lives on."""
    return getattr(variable, "value", variable).device


class VariableNamer:
    """Resolves variables to :class:`LayerName`; explicit ``models`` skip the discovery of roots."""

    def __init__(self, models: Mapping[str, keras.Model] | None = None):
        self._explicit = dict(models or {})
        self._names: dict[int, LayerName] = {}
        self._indexed = False

    def watched(self, variable: Any) -> bool:
        """Whether ``variable`` belongs to the models being recorded (all, when discovering)."""
        if not self._explicit:
            return True
        self._index_once()
        return id(variable) in self._names

    def names(self, variables: Iterable[Any]) -> list[LayerName]:
        """Names for ``variables``, discovering root models once for any unknown variable."""
        variables = list(variables)
        if not self._explicit and any(id(v) not in self._names for v in variables):
            self._index(labelled(live_roots()))
        self._index_once()
        return [self._names.get(id(v)) or self._loose(v, i) for i, v in enumerate(variables)]

    def _index_once(self) -> None:
        if self._explicit and not self._indexed:
            self._indexed = True
            self._index(self._explicit)

    def _index(self, roots: Mapping[str, keras.Model]) -> None:
        for variable, name, group, order in variable_names(roots, prefix=len(roots) > 1):
            self._names.setdefault(id(variable), LayerName(name, group, order))

    def _loose(self, variable: Any, index: int) -> LayerName:
        path = variable_path(variable)
        name = LayerName(path, first_component(path), (1 << 30, index))
        self._names[id(variable)] = name
        return name
