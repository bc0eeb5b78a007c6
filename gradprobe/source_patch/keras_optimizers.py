"""Setting a clip policy in the constructors of a script's Keras optimizers.

Keras optimizers clip by themselves when built with one setting, which the
policy names (:meth:`~gradprobe.policies.Policy.keras_setting`):
``global_clipnorm=X`` is ``global-norm:max=X`` (L2), ``clipnorm=X`` is
``layer-norm:max=X`` (each variable's gradient on its own) and
``clipvalue=X`` is ``value:max=X``. That setting is written into every
``keras.optimizers.NAME(...)`` call (also ``tf.keras...``), replacing any other
clip setting there; ``model.compile(optimizer="adam")`` becomes
``model.compile(optimizer=keras.optimizers.Adam(global_clipnorm=X))``, the same
optimizer with its defaults. Other policies have no Keras setting. A custom
loop's own ``tf.clip_by_global_norm`` (and the like) gives way to the setting
(see :mod:`gradprobe.source_patch.tf_loop_clips`).
"""

from __future__ import annotations

import libcst as cst

from gradprobe.policies import Policy
from gradprobe.source_patch.calls import add_keyword, literal_number, remove_argument
from gradprobe.source_patch.edits import Edits
from gradprobe.source_patch.imports import Imports
from gradprobe.source_patch.refusal import Problem
from gradprobe.source_patch.syntax import Script, number_code
from gradprobe.source_patch.tf_loop_clips import remove_loop_clips

CLIP_SETTINGS = ("global_clipnorm", "clipnorm", "clipvalue")
KERAS_PACKAGES = {"keras", "tensorflow", "tf_keras"}
NOT_OPTIMIZERS = {"Optimizer", "LossScaleOptimizer", "MultiOptimizer"}
# The names model.compile accepts for an optimizer, and their classes (keras.optimizers.get).
OPTIMIZER_CLASSES = {
    "adadelta": "Adadelta", "adafactor": "Adafactor", "adagrad": "Adagrad", "adam": "Adam", "adamax": "Adamax",
    "adamw": "AdamW", "ftrl": "Ftrl", "lion": "Lion", "nadam": "Nadam", "rmsprop": "RMSprop", "sgd": "SGD",
}


def is_keras_optimizer(name: str) -> bool:
    """``keras.optimizers.Adam``, ``tensorflow.keras.optimizers.SGD``... (not schedules)."""
    parts = name.split(".")
    return (parts[0] in KERAS_PACKAGES and "optimizers" in parts[1:-1] and "schedules" not in parts
            and parts[-1][:1].isupper() and parts[-1] not in NOT_OPTIMIZERS)


class KerasOptimizers:
    """The Keras optimizers a script builds, and the clip setting to write into each."""

    def __init__(self, script: Script, imports: Imports, edits: Edits, problems: list[Problem]):
        self.script = script
        self.imports = imports
        self.edits = edits
        self.problems = problems
        calls = script.find(cst.Call)
        self.constructors = [c for c in calls if any(is_keras_optimizer(n) for n in script.qualified_names(c.func))]
        uses_keras = any(m.split(".")[0] in KERAS_PACKAGES for m in imports.bindings.values())
        self.named = [arg for c in calls if uses_keras for arg in [_named_optimizer(c)] if arg is not None]

    @property
    def found(self) -> bool:
        """Whether the script builds any Keras optimizer."""
        return bool(self.constructors or self.named)

    def plan(self, policy: Policy) -> None:
        """Plan the setting in every optimizer (problems are collected, nothing is raised)."""
        setting = policy.keras_setting()
        if setting is None:
            first = min(self.script.line(n) for n in [*self.constructors, *self.named])
            self.problems.append(Problem(first, f"{policy} has no Keras optimizer setting (global_clipnorm is "
                                                f"global-norm with norm=2, clipnorm is layer-norm, clipvalue is "
                                                f"value); apply it without code changes: "
                                                f"gradprobe run --clip '{policy}' {self.script.filename}"))
            return
        name, value = setting
        remove_loop_clips(self.script, self.edits, self.problems)
        for call in self.constructors:
            updated = with_clip_setting(call, name, value)
            if updated is not call:
                self.edits.replace(call, updated)
        for arg in self.named:
            self._construct(arg, name, value)

    def _construct(self, arg: cst.Arg, name: str, value: float) -> None:
        text = arg.value.evaluated_value
        cls = OPTIMIZER_CLASSES.get(text.lower()) if isinstance(text, str) else None
        if cls is None:
            self.problems.append(Problem(self.script.line(arg), f"optimizer {self.script.code(arg.value)} is not "
                                                                "a Keras optimizer name this tool knows; build "
                                                                "it with keras.optimizers.NAME(...) and run again"))
            return
        module = self.imports.reference("keras.optimizers") or self.imports.reference("tensorflow.keras.optimizers")
        if module is None:
            from_tensorflow = any(m.split(".")[0] == "tensorflow" for m in self.imports.bindings.values())
            module = self.imports.require("keras.optimizers", self.edits,
                                          "from tensorflow import keras" if from_tensorflow else "import keras")
        constructor = cst.parse_expression(f"{module}.{cls}({name}={number_code(value)})")
        self.edits.replace(arg, arg.with_changes(value=constructor))


def _named_optimizer(call: cst.Call) -> cst.Arg | None:
    """The ``optimizer="adam"`` argument of a ``model.compile(...)`` call, if it is a name."""
    if not (isinstance(call.func, cst.Attribute) and call.func.attr.value == "compile"):
        return None
    for position, arg in enumerate(call.args):
        is_optimizer = (arg.keyword.value == "optimizer") if arg.keyword is not None else (position == 0
                                                                                          and not arg.star)
        if is_optimizer:
            return arg if isinstance(arg.value, cst.SimpleString) else None
    return None


def with_clip_setting(call: cst.Call, name: str, value: float) -> cst.Call:
    """``call`` with ``name=value`` as its only clip setting (the same node when nothing changes)."""
    present = [a for a in call.args if a.keyword is not None and a.keyword.value in CLIP_SETTINGS]
    value_code = number_code(value)
    if len(present) == 1 and present[0].keyword.value == name and literal_number(present[0].value) == float(value):
        return call
    if not present:
        return add_keyword(call, name, cst.parse_expression(value_code))
    replaced = present[0].with_changes(keyword=cst.Name(name), value=cst.parse_expression(value_code))
    call = call.with_changes(args=[replaced if a is present[0] else a for a in call.args])
    for extra in present[1:]:
        call = remove_argument(call, extra)
    return call
