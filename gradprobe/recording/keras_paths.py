"""Names of Keras variables, taken from their paths, on any Keras backend.

A Keras variable knows its path (``sequential/dense_1/kernel``). Paths are
made relative to the model that owns the variable: the root models are the
Keras models alive in the process that are no other model's layer (or the
models given explicitly). With one root, a Sequential or subclassed model's
own name is dropped (``dense_1/kernel``, group ``dense_1``); with several
roots (a GAN's generator and discriminator), each name is prefixed with its
root's label and grouped by root (``generator/dense/kernel``, group
``generator``). The TensorFlow namer names variables this way, and so does
the PyTorch namer for a Keras model on the torch backend, whose variables
are torch parameters. Keras is imported only by the functions that need it.
"""

from __future__ import annotations

import gc
from typing import Any, Iterator, Mapping

ROOT_GROUP = "(root)"


def variable_path(variable: Any) -> str:
    """The variable's path (Keras) or name without the ``:0`` output suffix (``tf.Variable``)."""
    path = getattr(variable, "path", None) or getattr(variable, "name", None) or "variable"
    head, sep, tail = path.rpartition(":")
    return head if sep and tail.isdigit() else path


def first_component(path: str) -> str:
    """The group of a path: its first component (the root group for a path of one component)."""
    return path.split("/", 1)[0] if "/" in path else ROOT_GROUP


def is_keras_model(obj: Any) -> bool:
    """Whether ``obj`` is a Keras model (False when Keras was never imported)."""
    import sys

    keras = sys.modules.get("keras")
    return keras is not None and issubclass(type(obj), keras.Model)


def live_roots() -> list[Any]:
    """Keras models alive in the process that are no other model's layer and own trainable variables.

    A Sequential model's internal functional twin (``_functional``) is not a root.
    """
    import keras

    models = [o for o in gc.get_objects() if issubclass(type(o), keras.Model)]  # type(): no proxy lookups
    inner = {id(layer) for m in models for layer in m._flatten_layers(include_self=False)}
    inner.update(id(m._functional) for m in models if isinstance(getattr(m, "_functional", None), keras.Model))
    return [m for m in models if id(m) not in inner and m.trainable_variables]


def labelled(roots: list[Any]) -> dict[str, Any]:
    """Roots by label: each model's name, made unique with trailing underscores."""
    found: dict[str, Any] = {}
    for root in roots:
        label = root.name
        while label in found:
            label += "_"
        found[label] = root
    return found


def variable_names(roots: Mapping[str, Any], prefix: bool) -> Iterator[tuple[Any, str, str, tuple[int, int]]]:
    """``(variable, name, group, order)`` for every trainable variable of each root in turn, ``order``
    being (root index, position in the root's depth order); ``prefix``: names start with the
    root's label and are grouped by it."""
    for r, (label, root) in enumerate(roots.items()):
        own = root.name + "/"
        for position, variable in enumerate(root.trainable_variables):
            path = variable_path(variable)
            relative = path[len(own):] if path.startswith(own) else path
            name = f"{label}/{relative}" if prefix else relative
            yield variable, name, label if prefix else first_component(relative), (r, position)
