"""Reading a PyTorch training script: its optimizers, GradScalers, clippers and steps.

Optimizers are found by their construction (``opt = torch.optim.NAME(...)``,
``self.opt = optim.NAME(...)``), GradScalers and ``gradprobe.clipper`` objects
likewise; a step is ``opt.step()``, ``scaler.step(opt)`` or
``clipper.step(opt)``. Before each step, its region holds the unscale and clip
calls since the last ``backward()``. A clip behind a condition (``if args.max_norm > 0:``
holding only the clip call) is found with its guard; any other block that clips there
(a loop, a ``with``, an ``if`` with more code or an ``else``) is listed as a nested clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from gradprobe.source_patch.calls import argument_value
from gradprobe.source_patch.refusal import Problem
from gradprobe.source_patch.syntax import Script, dotted
from gradprobe.source_patch.torch_clip import CLIP_NORM, CLIP_VALUE, CLIPPER, RETURNS

CLIPPER_FACTORIES = {"gradprobe.clipper", "gradprobe.api.clipper"}
TORCH_CLIP_FUNCTIONS = {"clip_grad_norm_": CLIP_NORM, "clip_grad_norm": CLIP_NORM, "clip_grad_value_": CLIP_VALUE}
# Scripts sometimes call a clip function that optimizers do not have; it is replaced like a real clip call.
MISTAKEN_CLIP = "mistaken"
NOT_OPTIMIZERS = {"lr_scheduler", "swa_utils"}


def is_torch_optimizer(name: str) -> bool:
    """``torch.optim.SGD`` and the like (not schedulers, not the base class)."""
    parts = name.split(".")
    return (parts[0] == "torch" and "optim" in parts[1:-1] and not NOT_OPTIMIZERS & set(parts)
            and parts[-1][:1].isupper() and parts[-1] != "Optimizer")


def is_grad_scaler(name: str) -> bool:
    """``torch.amp.GradScaler``, ``torch.cuda.amp.GradScaler``..."""
    return name.split(".")[0] == "torch" and name.endswith(".GradScaler")


def _torch_clip_kind(names: set[str]) -> str | None:
    for name in names:
        parts = name.split(".")
        if parts[0] == "torch" and "utils" in parts and parts[-1] in TORCH_CLIP_FUNCTIONS:
            return TORCH_CLIP_FUNCTIONS[parts[-1]]
    return None


@dataclass
class Built:
    """``TARGET = CALLEE(...)`` where the callee builds an optimizer, a GradScaler or a clipper."""

    target: str
    call: cst.Call
    line: cst.SimpleStatementLine | None


@dataclass
class Step:
    """One optimizer step: ``opt.step()``, ``scaler.step(opt)`` or ``clipper.step(opt)``."""

    call: cst.Call
    optimizer: str
    line: cst.SimpleStatementLine
    scaler: str | None = None
    clipper: str | None = None


@dataclass
class ClipCall:
    """A clip call on a line of its own before a step; ``outside`` an ``if`` around the step;
    ``guard`` the ``if`` whose only statement it is, when it runs behind a condition."""

    line: cst.SimpleStatementLine
    call: cst.Call
    kind: str
    subscripted: bool
    assigned: bool
    outside: bool
    clipper: str | None = None
    guard: cst.If | None = None

    @property
    def statement(self) -> cst.BaseStatement:
        """The statement that holds the clip in the step's block: the guard, or the line itself."""
        return self.guard or self.line

    @property
    def returns(self) -> str:
        """What the script may use from it (see ``RETURNS``)."""
        if self.kind == MISTAKEN_CLIP or (self.kind == CLIPPER and self.subscripted):
            return "norm"
        return RETURNS[self.kind]

    @property
    def params(self) -> cst.BaseExpression | None:
        """The parameters it clips, as written."""
        return argument_value(self.call, 0, "parameters")


@dataclass
class Region:
    """What stands between a step and the last ``backward()`` before it: where its clip belongs."""

    clips: list[ClipCall] = field(default_factory=list)
    unscales: list[cst.SimpleStatementLine] = field(default_factory=list)
    nested_clips: list[cst.BaseStatement] = field(default_factory=list)


class TorchSteps:
    """The optimizers, GradScalers, clippers and steps of a script (problems are collected in ``problems``)."""

    def __init__(self, script: Script, problems: list[Problem]):
        self.script = script
        self.problems = problems
        self.optimizers: dict[str, list[Built]] = {}
        self.scalers: set[str] = set()
        self.clippers: dict[str, list[Built]] = {}
        self.steps: list[Step] = []
        self._calls = script.find(cst.Call)
        self._find_constructions()
        self._find_steps()

    def _find_constructions(self) -> None:
        for call in self._calls:
            names = self.script.qualified_names(call.func)
            if any(is_torch_optimizer(n) for n in names):
                registry = self.optimizers
            elif any(is_grad_scaler(n) for n in names):
                registry = None
            elif names & CLIPPER_FACTORIES:
                registry = self.clippers
            else:
                continue
            small, line, _ = self.script.statement_of(call)
            targets = getattr(small, "targets", None)
            target = (dotted(targets[0].target) if targets is not None and len(targets) == 1
                      else dotted(getattr(small, "target", None)))
            if target is None:
                continue
            if registry is None:
                self.scalers.add(target)
            else:
                registry.setdefault(target, []).append(Built(target, call, line))

    def _is_scaler(self, name: str | None) -> bool:
        return name is not None and (name in self.scalers or name.split(".")[-1].lower().endswith("scaler"))

    def _find_steps(self) -> None:
        for call in self._calls:
            func = call.func
            if not isinstance(func, cst.Attribute) or func.attr.value != "step":
                continue
            receiver = dotted(func.value)
            args = call.args
            scaler = clipper = None
            if receiver in self.optimizers:
                if args:
                    self._refuse(call, f"`{self.script.code(call)}` passes a closure: the gradients are computed "
                                       "inside it, so clip them there, before it returns the loss")
                    continue
                optimizer = receiver
            elif receiver in self.clippers or self._is_scaler(receiver):
                if len(args) != 1 or args[0].keyword is not None or args[0].star:
                    self._refuse(call, f"`{self.script.code(call)}`: expected a single optimizer argument")
                    continue
                optimizer = self.script.code(args[0].value)
                if receiver in self.clippers:
                    clipper = receiver
                else:
                    scaler = receiver
            else:
                continue
            _, line, reason = self.script.statement_of(call)
            if line is None:
                self._refuse(call, f"`{self.script.code(call)}` cannot get a clip before it: {reason}")
                continue
            self.steps.append(Step(call, optimizer, line, scaler, clipper))

    def unknown_steps(self) -> list[str]:
        """``file:line`` hints for ``x.step()`` calls on objects that are not known optimizers."""
        hints = []
        for call in self._calls:
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "step" and not call.args:
                receiver = dotted(func.value) or self.script.code(func.value)
                if "sched" not in receiver.lower():
                    hints.append(f"{self.script.filename}:{self.script.line(call)}: `{receiver}` is not built "
                                 "with torch.optim in this file")
        return hints

    def _refuse(self, node: cst.CSTNode, message: str) -> None:
        self.problems.append(Problem(self.script.line(node), message))

    def region(self, step: Step) -> Region:
        """The clip-related lines between the step and the last ``backward()`` before it.

        The search climbs out of ``if`` blocks around the step (the stepping
        branch of gradient accumulation); what it finds there is marked
        ``outside``: it runs on every backward, not only before a step.
        """
        region = Region()
        statement: cst.BaseStatement = step.line
        step_lines = {s.line for s in self.steps}
        outside = False
        while True:
            block = self.script.parent(statement)
            body = list(block.body)
            for line in reversed(body[:body.index(statement)]):
                calls = self.script.find(cst.Call, line)
                if line in step_lines or any(isinstance(c.func, cst.Attribute) and c.func.attr.value == "backward"
                                             for c in calls):
                    return region
                self._collect(line, calls, step, region, outside)
            owner = self.script.parent(block)
            if not isinstance(owner, (cst.If, cst.Else)):
                return region
            while isinstance(owner, (cst.If, cst.Else)):
                statement, owner = owner, self.script.parent(owner)
            outside = True

    def _collect(self, line: cst.BaseStatement, calls: list[cst.Call], step: Step, region: Region,
                 outside: bool) -> None:
        """Add ``line`` to ``region`` when it unscales the step's optimizer or clips."""
        guard = _guarded_line(line)
        if guard is not None:
            clip = self._clip_call(guard, outside)
            if clip is not None:
                clip.guard = line
                region.clips.insert(0, clip)
                return
        if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
            if any(self._clip_kind(c) for c in calls):
                region.nested_clips.append(line)
            return
        clip = self._clip_call(line, outside)
        if clip is not None:
            region.clips.insert(0, clip)
            return
        small = line.body[0]
        value = getattr(small, "value", None) if isinstance(small, (cst.Expr, cst.Assign, cst.AnnAssign)) else None
        if isinstance(value, cst.Call) and self.is_unscale(value, step):
            region.unscales.insert(0, line)

    def _clip_call(self, line: cst.SimpleStatementLine, outside: bool) -> ClipCall | None:
        """The clip call ``line`` consists of (alone, its result assigned or not), or None."""
        if len(line.body) != 1:
            return None
        small = line.body[0]
        value = getattr(small, "value", None) if isinstance(small, (cst.Expr, cst.Assign, cst.AnnAssign)) else None
        subscripted = isinstance(value, cst.Subscript) and isinstance(value.value, cst.Call)
        call = value.value if subscripted else value
        if not isinstance(call, cst.Call):
            return None
        kind = self._clip_kind(call)
        if kind is None:
            return None
        clipper = dotted(call.func) if kind == CLIPPER else None
        return ClipCall(line, call, kind, subscripted, not isinstance(small, cst.Expr), outside, clipper)

    def is_unscale(self, call: cst.Call, step: Step) -> bool:
        """Whether ``call`` is ``scaler.unscale_(OPT)`` for the optimizer of ``step``."""
        func = call.func
        return (isinstance(func, cst.Attribute) and func.attr.value == "unscale_" and len(call.args) == 1
                and self._is_scaler(dotted(func.value))
                and self.script.code(call.args[0].value) == step.optimizer)

    def _clip_kind(self, call: cst.Call) -> str | None:
        """The kind of clip ``call`` is, or None when it is not a clip."""
        kind = _torch_clip_kind(self.script.qualified_names(call.func))
        if kind is not None:
            return kind
        if dotted(call.func) in self.clippers:
            return CLIPPER
        func = call.func
        if (isinstance(func, cst.Attribute) and func.attr.value in TORCH_CLIP_FUNCTIONS
                and dotted(func.value) in self.optimizers):
            return MISTAKEN_CLIP
        return None


def _guarded_line(statement: cst.BaseStatement) -> cst.SimpleStatementLine | None:
    """The one line of ``if COND: LINE`` (no ``elif``/``else``), or None."""
    if not isinstance(statement, cst.If) or statement.orelse is not None:
        return None
    body = statement.body.body if isinstance(statement.body, cst.IndentedBlock) else [statement.body]
    if len(body) != 1 or not isinstance(body[0], cst.SimpleStatementLine):
        return None
    return body[0]
