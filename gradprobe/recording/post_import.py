"""Run a callback right after a module is first imported, without importing it ourselves.

This is how ``gradprobe profile`` attaches to PyTorch (and later TensorFlow)
only when the user's script imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable

Callback = Callable[[object], None]


class PostImportHooks(importlib.abc.MetaPathFinder):
    """A meta-path finder that calls ``callbacks[name](module)`` once ``name`` has been executed."""

    def __init__(self, callbacks: dict[str, Callback]):
        self.callbacks = dict(callbacks)
        self._busy: set[str] = set()

    def install(self) -> "PostImportHooks":
        """Put the finder first on ``sys.meta_path``; fire at once for modules already imported."""
        sys.meta_path.insert(0, self)
        for name in list(self.callbacks):
            if name in sys.modules:
                self._fire(name, sys.modules[name])
        return self

    def remove(self) -> None:
        """Take the finder off ``sys.meta_path``."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            self._fire(fullname, module)

        spec.loader.exec_module = exec_module
        return spec

    def _fire(self, name: str, module: object) -> None:
        callback = self.callbacks.pop(name, None)
        if callback is not None:
            callback(module)
