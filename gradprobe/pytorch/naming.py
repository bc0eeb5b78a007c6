"""Names for parameters, taken from the modules that own them.

When gradprobe profiles an unmodified script it has no handle on the model.
The first time it meets parameters it cannot name, it finds the root modules
alive in the process (modules that are nobody's child), unwraps DDP /
DataParallel / ``torch.compile`` wrappers, and names each parameter by its
path in its root (``features.0.weight``). When several roots own recorded
parameters, each name is prefixed with the variable the script bound the root
to (``netG.main.0.weight``), or its class name when no variable is found.
Parameters owned by no module are named by the string key of a dict that holds
them (``torch.func.functional_call``'s ``{name: tensor}``), else after the
variable bound to them, else ``<list>.<index>``, else ``param.<index>``.

Keras 3 on the torch backend: a Keras model is a module whose parameters are
its variables' values, but its layers are no module's children and its
``named_parameters()`` are ``_torch_params.<variable path>``. A Keras model
is therefore a root of its own, named as on the TensorFlow backend
(:mod:`gradprobe.recording.keras_paths`: ``conv2d/kernel``, or
``generator/conv2d/kernel`` with several roots, labelled by the model's
name), and its layers are not roots.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Iterable, Mapping

import torch

from gradprobe.recording import keras_paths

_WRAPPER_ATTRS = ("_orig_mod", "module")
_WRAPPER_CLASSES = ("OptimizedModule", "DistributedDataParallel", "DataParallel", "FullyShardedDataParallel")


@dataclass(frozen=True)
class ParamName:
    """Where a parameter lives: its name, its group (top-level module) and depth order."""

    name: str
    group: str
    order: tuple[int, int]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP, DataParallel, FSDP (v1) and ``torch.compile`` wrappers."""
    while type(module).__name__ in _WRAPPER_CLASSES:
        inner = next((getattr(module, a) for a in _WRAPPER_ATTRS if hasattr(module, a)), None)
        if not isinstance(inner, torch.nn.Module):
            break
        module = inner
    return module


def _is_internal(module: torch.nn.Module) -> bool:
    """Modules torch builds for itself (fx / dynamo graphs) that alias the user's parameters."""
    return type(module).__module__.startswith(("torch.fx", "torch._"))


def _is_keras_layer(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a Keras layer (Keras 3 on the torch backend)."""
    keras = sys.modules.get("keras")
    return keras is not None and issubclass(type(module), keras.layers.Layer)


def _keras_roots() -> list[torch.nn.Module]:
    """The Keras models alive in the process that are roots, when Keras runs on the torch backend."""
    keras = sys.modules.get("keras")
    if keras is None or keras.backend.backend() != "torch":
        return []
    return keras_paths.live_roots()


def _live_roots() -> list[torch.nn.Module]:
    """Modules alive in the process that are no other module's child and own trainable parameters
    (Keras layers excepted: see :func:`_keras_roots`)."""
    modules = [o for o in gc.get_objects() if issubclass(type(o), torch.nn.Module) and not _is_internal(o)]
    children = {id(child) for m in modules for child in m.children()}
    return [
        unwrap(m)
        for m in modules
        if id(m) not in children and not _is_keras_layer(m) and any(p.requires_grad for p in m.parameters())
    ]


def _all_roots() -> list[torch.nn.Module]:
    return _keras_roots() + _live_roots()


def _user_frames() -> Iterable[FrameType]:
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module.startswith("gradprobe") or module.startswith("torch")):
            yield frame
        frame = frame.f_back


def variable_names(targets: Mapping[int, object]) -> dict[int, str]:
    """Map ids of ``targets`` to the first variable name that refers to them in user frames."""
    found: dict[int, str] = {}
    for frame in _user_frames():
        for scope in (frame.f_locals, frame.f_globals):
            for var, value in list(scope.items()):
                if var.startswith("_") or var == "self" or id(value) not in targets:
                    continue
                found.setdefault(id(value), var)
        if len(found) == len(targets):
            break
    return found


CONTAINER_SCAN = 4096  # dicts and lists longer than this are not searched for loose parameters


def held_names(targets: Mapping[int, object]) -> dict[int, str]:
    """Names for tensors owned by no module, from the user frames that hold them: the string key of a
    dict holding them (``torch.func``'s ``params = {name: tensor}``, prefixed with the dict's variable
    when two dicts use the same key), else the variable bound to them, else ``<list variable>.<index>``.
    The result is ordered: dict entries in their dict's order first."""
    keyed: dict[int, tuple[str, str]] = {}
    direct: dict[int, str] = {}
    listed: dict[int, str] = {}
    for frame in _user_frames():
        for scope in (frame.f_locals, frame.f_globals):
            for var, value in list(scope.items()):
                if var.startswith("_") or var == "self":
                    continue
                if id(value) in targets:
                    direct.setdefault(id(value), var)
                elif isinstance(value, dict) and len(value) <= CONTAINER_SCAN:
                    for key, item in list(value.items()):
                        if isinstance(key, str) and id(item) in targets:
                            keyed.setdefault(id(item), (var, key))
                elif isinstance(value, (list, tuple)) and len(value) <= CONTAINER_SCAN:
                    for i, item in enumerate(value):
                        if id(item) in targets:
                            listed.setdefault(id(item), f"{var}.{i}")
    holders: dict[str, set[str]] = {}
    for var, key in keyed.values():
        holders.setdefault(key, set()).add(var)
    found = {pid: key if len(holders[key]) == 1 else f"{var}.{key}" for pid, (var, key) in keyed.items()}
    for names in (direct, listed):
        for pid, name in names.items():
            found.setdefault(pid, name)
    return found


class ParamNamer:
    """Resolves parameters to :class:`ParamName`; explicit ``models`` skip the discovery."""

    def __init__(self, models: Mapping[str, torch.nn.Module] | None = None):
        self._explicit = {label: unwrap(m) for label, m in (models or {}).items()}
        self._names: dict[int, ParamName] = {}
        if self._explicit:
            self._index(self._explicit, prefix=len(self._explicit) > 1)

    def watched(self, param: torch.Tensor) -> bool:
        """Whether ``param`` belongs to the models being recorded (all, when discovering)."""
        return not self._explicit or id(param) in self._names

    def names(self, params: list[torch.Tensor]) -> list[ParamName]:
        """Names for ``params``, discovering roots once for any unknown parameter."""
        if not self._explicit and any(id(p) not in self._names for p in params):
            self._discover(params)
        return [self._names.get(id(p)) or self._fallback(p, i) for i, p in enumerate(params)]

    def trainable_params(self) -> list[torch.Tensor]:
        """Parameters a loop without an optimizer may update: those of the watched or
        discovered models, plus leaf tensors requiring grad that user code holds in variables."""
        roots = list(self._explicit.values()) if self._explicit else _all_roots()
        found: dict[int, torch.Tensor] = {}
        for root in roots:
            for p in root.parameters():
                if p.requires_grad:
                    found.setdefault(id(p), p)
        if not self._explicit:
            for frame in _user_frames():
                for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
                    if isinstance(value, torch.Tensor) and value.requires_grad and value.is_leaf:
                        found.setdefault(id(value), value)
        return list(found.values())

    def roots_of(self, params: list[torch.Tensor]) -> list[torch.nn.Module]:
        """The watched (or, when discovering, live top-level) models that own any of ``params``."""
        wanted = {id(p) for p in params}
        roots = list(self._explicit.values()) if self._explicit else _all_roots()
        return [root for root in roots if any(id(p) in wanted for p in root.parameters())]

    def _discover(self, params: list[torch.Tensor]) -> None:
        models, owners = _keras_roots(), _live_roots()
        labels = variable_names({id(r): r for r in owners})
        labels.update((id(m), m.name) for m in models)
        by_label: dict[str, torch.nn.Module] = {}
        for root in models + owners:
            label = labels.get(id(root), type(root).__name__)
            while label in by_label:
                label += "_"
            by_label[label] = root
        self._index(by_label, prefix=len(by_label) > 1)
        loose = {id(p): p for p in params if id(p) not in self._names}
        for pid, name in held_names(loose).items():
            group = name.split(".")[0] if "." in name else name
            self._names[pid] = ParamName(name, group, (len(by_label), len(self._names)))

    def _index(self, roots: Mapping[str, torch.nn.Module], prefix: bool) -> None:
        for r, (label, root) in enumerate(roots.items()):
            if keras_paths.is_keras_model(root):
                self._index_keras(r, label, root, prefix)
                continue
            for position, (name, p) in enumerate(root.named_parameters()):
                full = f"{label}.{name}" if prefix else name
                group = label if prefix else (name.split(".")[0] if "." in name else "(root)")
                self._names.setdefault(id(p), ParamName(full, group, (r, position)))

    def _index_keras(self, r: int, label: str, model: torch.nn.Module, prefix: bool) -> None:
        """Name a Keras model's parameters (its variables' torch values) by the variables' paths."""
        for variable, name, group, (_, position) in keras_paths.variable_names({label: model}, prefix):
            param = getattr(variable, "_value", None)
            if isinstance(param, torch.Tensor):
                self._names.setdefault(id(param), ParamName(name, group, (r, position)))

    def _fallback(self, param: torch.Tensor, index: int) -> ParamName:
        name = ParamName(f"param.{index}", "(unowned)", (1 << 30, index))
        self._names[id(param)] = name
        return name
