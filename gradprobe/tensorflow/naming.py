"""Names for Keras and TensorFlow variables, taken from their paths.

A Keras variable knows its path (``sequential/dense_1/kernel``). Paths are
made relative to the model that owns the variable: the root models are the
Keras models alive in the process that are no other model's layer (or the
models given explicitly). With one root, a Sequential or subclassed model's
own name is dropped (``dense_1/kernel``, group ``dense_1``); with several
roots (a GAN's generator and discriminator), each name is prefixed with its
root's name and grouped by root (``generator/dense/kernel``, group
``generator``). A plain ``tf.Variable`` owned by no model keeps its name
without the ``:0`` suffix, grouped by its first path component.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import keras

ROOT_GROUP = "(root)"


@dataclass(frozen=True)
class LayerName:
    """Where a variable lives: its name, its group and its depth order."""

    name: str
    group: str
    order: tuple[int, int]


def variable_path(variable: Any) -> str:
    """The variable's path (Keras) or name without the ``:0`` output suffix (``tf.Variable``)."""
    path = getattr(variable, "path", None) or getattr(variable, "name", None) or "variable"
    head, sep, tail = path.rpartition(":")
    return head if sep and tail.isdigit() else path


def variable_device(variable: Any) -> str:
    """The device a (Keras or TensorFlow) variable lives on."""
    return getattr(variable, "value", variable).device


def _first(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else ROOT_GROUP


def _live_roots() -> list[keras.Model]:
    """Keras models alive in the process that are no other model's layer and own trainable variables.

    A Sequential model's internal functional twin (``_functional``) is not a root.
    """
    models = [o for o in gc.get_objects() if issubclass(type(o), keras.Model)]  # type(): no proxy lookups
    inner = {id(layer) for m in models for layer in m._flatten_layers(include_self=False)}
    inner.update(id(m._functional) for m in models if isinstance(getattr(m, "_functional", None), keras.Model))
    return [m for m in models if id(m) not in inner and m.trainable_variables]


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
            self._index(self._labelled(_live_roots()))
        self._index_once()
        return [self._names.get(id(v)) or self._loose(v, i) for i, v in enumerate(variables)]

    def _index_once(self) -> None:
        if self._explicit and not self._indexed:
            self._indexed = True
            self._index(self._explicit)

    @staticmethod
    def _labelled(roots: list[keras.Model]) -> dict[str, keras.Model]:
        labelled: dict[str, keras.Model] = {}
        for root in roots:
            label = root.name
            while label in labelled:
                label += "_"
            labelled[label] = root
        return labelled

    def _index(self, roots: Mapping[str, keras.Model]) -> None:
        prefix = len(roots) > 1
        for r, (label, root) in enumerate(roots.items()):
            own = root.name + "/"
            for position, variable in enumerate(root.trainable_variables):
                path = variable_path(variable)
                relative = path[len(own):] if path.startswith(own) else path
                name = f"{label}/{relative}" if prefix else relative
                group = label if prefix else _first(relative)
                self._names.setdefault(id(variable), LayerName(name, group, (r, position)))

    def _loose(self, variable: Any, index: int) -> LayerName:
        path = variable_path(variable)
        name = LayerName(path, _first(path), (1 << 30, index))
        self._names[id(variable)] = name
        return name
