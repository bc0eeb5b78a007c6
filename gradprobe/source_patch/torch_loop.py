"""Adding a clip policy before every PyTorch optimizer step of a script.

Before each step (see :mod:`gradprobe.source_patch.torch_steps`) the clip goes
right after any ``scaler.unscale_(opt)`` (added when the script has a GradScaler
and does not unscale). An existing clip call before the step is updated, not
duplicated, and one behind a condition (``if args.max_norm > 0: clip_grad_norm_(...)``)
is replaced with its condition, so the applied policy is the one in force on every
step; any other block that clips before the step is refused. One that runs after
every backward while the step runs on some (gradient accumulation) moves to the
stepping iteration. The clipped parameters
are the optimizer's own: ``model.parameters()`` when the optimizer was built
from exactly that and ``model`` is visible at the step, else
``[p for g in opt.param_groups for p in g["params"]]``.
"""

from __future__ import annotations

import json
import math
import re

import libcst as cst

from gradprobe.errors import GradprobeError
from gradprobe.policies import Policy, parse_spec
from gradprobe.source_patch.calls import argument, argument_value, set_argument, set_number
from gradprobe.source_patch.edits import Edits
from gradprobe.source_patch.imports import Imports
from gradprobe.source_patch.refusal import Problem
from gradprobe.source_patch.syntax import Script, dotted
from gradprobe.source_patch.torch_clip import (
    CLIPPER, DEFAULTS, INF_CODE, INF_SPELLINGS, RETURNS, SIGNATURES, TORCH_UTILS, TorchClip, torch_clip,
)
from gradprobe.source_patch.torch_steps import ClipCall, Region, Step, TorchSteps

CLIPPER_NAME = "_gradprobe_clip"


class TorchLoop(TorchSteps):
    """Plans the clip before every optimizer step of a script."""

    def __init__(self, script: Script, imports: Imports, edits: Edits, problems: list[Problem]):
        super().__init__(script, problems)
        self.imports = imports
        self.edits = edits
        self.notes: list[str] = []
        self.policy: Policy | None = None

    def plan(self, policy: Policy) -> None:
        """Plan the clip before every step (problems are collected, nothing is raised)."""
        self.policy = policy
        clip = torch_clip(policy)
        groups: dict[str, list[Step]] = {}
        for step in self.steps:
            groups.setdefault(step.optimizer, []).append(step)
        used_clippers: set[str] = set()
        for optimizer, steps in groups.items():
            regions = [self.region(step) for step in steps]
            clipper = None
            if clip.kind == CLIPPER:
                clipper = self._clipper_for(optimizer, steps, regions, len(groups))
                if clipper is None:
                    continue
                used_clippers.add(clipper)
            for step, region in zip(steps, regions):
                self._plan_step(clip, step, region, clipper)
        for name in self.optimizers:
            if name not in groups and groups:
                self.notes.append(f"{self.script.filename}:{self.script.line(self.optimizers[name][0].call)}: "
                                  f"`{name}` is never stepped in this file; it is left unclipped")
        self._drop_unused_clippers(used_clippers)

    def _clipper_for(self, optimizer: str, steps: list[Step], regions: list[Region], groups: int) -> str | None:
        """The clipper variable for ``optimizer``: the one the script already uses, or a new one."""
        existing = {s.clipper for s in steps if s.clipper} | {c.clipper for r in regions for c in r.clips
                                                               if c.clipper}
        if len(existing) > 1:
            self._refuse(steps[0].call, f"`{optimizer}` is clipped by several clippers "
                                        f"({', '.join(sorted(existing))}); keep one and run again")
            return None
        if existing:
            name = existing.pop()
        else:
            base, _, last = optimizer.rpartition(".")
            suffix = "" if groups == 1 else "_" + re.sub(r"\W+", "_", last).strip("_")
            name = f"{base}.{CLIPPER_NAME}{suffix}" if base else CLIPPER_NAME + suffix
        if name in self.clippers:
            for built in self.clippers[name]:
                self._update_clipper_spec(built.call)
            return name
        builds = self.optimizers.get(optimizer)
        if not builds:
            self._refuse(steps[0].call, f"cannot tell where `{optimizer}` is built (no `{optimizer} = "
                                        "torch.optim.NAME(...)` in this file), so there is no place to create "
                                        "its clipper once; build the clipper yourself or use `gradprobe run`")
            return None
        factory = self.imports.require("gradprobe.clipper", self.edits, "import gradprobe")
        for built in builds:
            if built.line is None:
                self._refuse(built.call, f"the construction of `{optimizer}` shares its line with other code; "
                                         "put it on a line of its own so the clipper can follow it")
                return None
            self.edits.add_after(built.line, cst.parse_statement(f"{name} = {factory}({json.dumps(self.spec)})"))
        return name

    @property
    def spec(self) -> str:
        """The canonical spec being applied."""
        return str(self.policy)

    def _update_clipper_spec(self, call: cst.Call) -> None:
        arg = argument(call, 0, "spec")
        if arg is not None and isinstance(arg.value, cst.SimpleString):
            try:
                if str(parse_spec(arg.value.evaluated_value)) == self.spec:
                    return
            except GradprobeError:
                pass
        new_value = cst.SimpleString(json.dumps(self.spec))
        if arg is None:
            self.edits.replace(call, call.with_changes(args=[cst.Arg(new_value)]))
        else:
            self.edits.replace(arg, arg.with_changes(value=new_value))

    def _plan_step(self, clip: TorchClip, step: Step, region: Region, clipper: str | None) -> None:
        if len(region.clips) > 1:
            lines = ", ".join(str(self.script.line(c.line)) for c in region.clips)
            self._refuse(step.call, f"several clip calls (lines {lines}) before `{self.script.code(step.call)}`; "
                                    "keep one and run again")
            return
        if step.scaler and clip.skips:
            self._refuse(step.call, f"`{self.script.code(step.call)}`: a policy that skips updates ({self.spec}) "
                                    "cannot be written around a GradScaler step; use `gradprobe run --clip`")
            return
        if region.nested_clips:
            line = region.nested_clips[0]
            self._refuse(line, f"this block clips before `{self.script.code(step.call)}` along with other code, "
                               "so its clip would stay in force beside the applied one; reduce it to "
                               "`if CONDITION: CLIP_CALL` or remove its clip and run again")
            return
        existing = region.clips[0] if region.clips else None
        if existing is not None and existing.outside and existing.assigned:
            self._refuse(existing.line, f"`{self.script.code(existing.call)}` runs after every backward, but "
                                        f"`{self.script.code(step.call)}` (line {self.script.line(step.call)}) only "
                                        "on some (gradient accumulation), and its result is used; move it right "
                                        "before the step and run again")
            return
        clip_line = self._clip_line(clip, step, existing, clipper)
        if clip_line is None:
            return
        if existing is not None and existing.guard is not None:
            # The applied policy is in force on every step: the script's condition goes with its clip.
            clip_line = clip_line.with_changes(leading_lines=existing.guard.leading_lines)
            self.notes.append(f"{self.script.filename}:{self.script.line(existing.guard)}: the clip behind "
                              f"`if {self.script.code(existing.guard.test)}:` was replaced by {self.spec}, "
                              "which now clips on every step")
        moved = existing is not None and existing.outside
        anchor = existing.statement if existing and not moved else step.line
        inserted = self._unscale_lines(step, region, anchor) if step.scaler else []
        if moved:
            # Clip on the stepping iteration only; the clip's own comments move with it.
            self.edits.remove(existing.statement)
            inserted.append(clip_line.with_changes(leading_lines=[e for e in clip_line.leading_lines if e.comment]))
        elif existing:
            self.edits.replace(existing.statement, clip_line)
        else:
            inserted.append(clip_line)
        if inserted:
            # The comment and blank lines above the anchor stay above the group.
            inserted[0] = inserted[0].with_changes(leading_lines=[*anchor.leading_lines, *inserted[0].leading_lines])
            self.edits.add_before(anchor, *inserted)
            self.edits.set_leading_lines(anchor, ())
        self._plan_step_call(clip, step, clipper)

    def _unscale_lines(self, step: Step, region: Region, anchor: cst.SimpleStatementLine) -> list[cst.BaseStatement]:
        """The ``scaler.unscale_(opt)`` to put before the clip at ``anchor``: moved up from below it, or new.

        Empty when the step's optimizer is already unscaled above ``anchor`` in the same function.
        """
        late = [u for u in region.unscales if self.script.line(u) > self.script.line(anchor)]
        for line in late:
            self.edits.remove(line)
        if late:
            return [line.with_changes(leading_lines=()) for line in late]
        function = self.script.function_of(step.call)
        if any(self.is_unscale(call, step) and self.script.line(call) < self.script.line(anchor)
               and self.script.function_of(call) is function for call in self._calls):
            return []
        return [cst.parse_statement(f"{step.scaler}.unscale_({step.optimizer})")]

    def _plan_step_call(self, clip: TorchClip, step: Step, clipper: str | None) -> None:
        if step.scaler:
            return
        if clip.skips:
            wanted = f"{clipper}.step({step.optimizer})"
        else:
            wanted = f"{step.optimizer}.step()"
        if self.script.code(step.call) != wanted:
            self.edits.replace(step.call, cst.parse_expression(wanted))

    def _clip_line(self, clip: TorchClip, step: Step, existing: ClipCall | None,
                   clipper: str | None) -> cst.SimpleStatementLine | None:
        """The clip line to put before ``step``: ``existing`` updated, or a new one."""
        if existing is not None and existing.kind == clip.kind:
            if clip.kind == CLIPPER and existing.clipper == clipper:
                return existing.line
            if clip.kind != CLIPPER:
                return existing.line.with_changes(body=[self._updated_small(existing, clip)])
        if existing is not None and existing.assigned:
            compatible = existing.returns in ("nothing", RETURNS[clip.kind]) or (
                existing.returns == "norm" and clip.kind == CLIPPER)
            if not compatible:
                self._refuse(existing.line, f"the result of `{self.script.code(existing.call)}` ({existing.returns}) "
                                            f"is used, and {self.spec} returns {RETURNS[clip.kind]}; "
                                            "change that line by hand")
                return None
        params = existing.params if existing is not None else None
        params_code = self.script.code(params) if params is not None else self._parameters(step)
        if clip.kind == CLIPPER:
            function = clipper
        else:
            function = self.imports.require(f"{TORCH_UTILS}.{clip.kind}", self.edits, "import torch")
        code = clip.call_code(function, params_code)
        if existing is None or not existing.assigned:
            return existing.line.with_changes(body=[cst.Expr(cst.parse_expression(code))]) if existing else \
                cst.parse_statement(code)
        if clip.kind == CLIPPER and existing.returns == "norm":
            code += "[0]"
        small = existing.line.body[0]
        return existing.line.with_changes(body=[small.with_changes(value=cst.parse_expression(code))])

    def _updated_small(self, existing: ClipCall, clip: TorchClip) -> cst.BaseSmallStatement:
        """``existing`` (same kind of torch call as ``clip``) with the policy's numbers."""
        call = existing.call
        for position, key in enumerate(SIGNATURES[clip.kind], start=1):
            current = argument_value(call, position, key)
            if key not in clip.arguments and current is None:
                continue  # the torch default is the policy's: leave it implicit
            value = clip.arguments.get(key, DEFAULTS.get(key))
            if value != math.inf:
                call = set_number(call, position, key, value)
            elif current is None or self.script.code(current) not in INF_SPELLINGS:
                call = set_argument(call, position, key, INF_CODE)
        small = existing.line.body[0]
        return small.with_changes(value=call)

    def _parameters(self, step: Step) -> str:
        """The parameters to clip before ``step``, as code."""
        fallback = f'[p for g in {step.optimizer}.param_groups for p in g["params"]]'
        builds = self.optimizers.get(step.optimizer)
        if not builds:
            return fallback
        sources = set()
        for built in builds:
            params = argument_value(built.call, 0, "params")
            if not (isinstance(params, cst.Call) and not params.args and isinstance(params.func, cst.Attribute)
                    and params.func.attr.value == "parameters" and dotted(params.func.value)):
                return fallback
            owner = dotted(params.func.value)
            if not self._visible(owner.split(".")[0], built.call, step.call):
                return fallback
            sources.add(owner)
        return f"{sources.pop()}.parameters()" if len(sources) == 1 else fallback

    def _visible(self, root: str, built: cst.CSTNode, used: cst.CSTNode) -> bool:
        if root == "self":
            owner = self.script.enclosing(built, cst.ClassDef)
            return owner is not None and owner is self.script.enclosing(used, cst.ClassDef)
        return self.script.same_binding(root, built, used)

    def _drop_unused_clippers(self, used: set[str]) -> None:
        """Remove the clippers this tool created that no step uses any more, and then their import."""
        dropped = []
        for name, builds in self.clippers.items():
            if name in used or not name.split(".")[-1].startswith(CLIPPER_NAME):
                continue
            if any(b.line is None for b in builds) or self._still_used(name, [b.line for b in builds]):
                continue
            for built in builds:
                self.edits.remove(built.line)
            dropped.append(builds[0].call)
        if not dropped:
            return
        root = (dotted(dropped[0].func) or "").split(".")[0]
        statement = self.imports.statements.get(root)
        if statement is not None and self.script.code(statement.body[0]).strip() == f"import {root}" \
                and not self._still_used(root, [statement]):
            self.edits.remove(statement)

    def _still_used(self, name: str, ignored: list[cst.CSTNode]) -> bool:
        for node in self.script.find(cst.Name) + self.script.find(cst.Attribute):
            if dotted(node) != name:
                continue
            ancestors = list(self.script.ancestors(node))
            if any(i is node or i in ancestors for i in ignored) or self.edits.touches(node, ancestors):
                continue
            return True
        return False
