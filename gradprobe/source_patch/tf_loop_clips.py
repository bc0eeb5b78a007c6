"""The clipping a TensorFlow custom training loop does itself, which the optimizer setting replaces.

A custom loop may clip between ``tape.gradient`` and ``apply_gradients``::

    grads, _ = tf.clip_by_global_norm(grads, X)
    grads = tf.clip_by_global_norm(grads, X)[0]
    grads = [tf.clip_by_norm(g, X) for g in grads]      # or tf.clip_by_value(g, lo, hi)

Once the optimizers are built with a clip setting such a line would clip a
second time, so it is removed and the gradients reach the optimizer as
computed. Any other clipping of gradients by these functions is refused,
naming its line.
"""

from __future__ import annotations

import libcst as cst

from gradprobe.source_patch.edits import Edits
from gradprobe.source_patch.refusal import Problem
from gradprobe.source_patch.syntax import Script, dotted

TF_CLIP_FUNCTIONS = {"clip_by_global_norm", "clip_by_norm", "clip_by_value"}


def tf_clip_function(names: set[str]) -> str | None:
    """``clip_by_global_norm`` (and the like) when ``names`` holds a TensorFlow clip function."""
    for name in names:
        parts = name.split(".")
        if parts[0] == "tensorflow" and parts[-1] in TF_CLIP_FUNCTIONS:
            return parts[-1]
    return None


def remove_loop_clips(script: Script, edits: Edits, problems: list[Problem]) -> None:
    """Plan the removal of every gradient-clipping line in ``script``; collect a problem for each other use.

    A TensorFlow clip call clips gradients when it reads a variable that its
    function assigns from ``tape.gradient(...)``; other clip calls (of data,
    say) are left alone.
    """
    for call in script.find(cst.Call):
        function = tf_clip_function(script.qualified_names(call.func))
        if function is None or not _reads_gradients(script, call):
            continue
        line = _clip_line(script, call, function)
        if line is None:
            problems.append(Problem(script.line(call), f"`{script.code(call)}` clips the gradients in the loop, "
                                                       "where the optimizer now clips them, and gradprobe can only "
                                                       "remove a line that clips a gradient list in place (`grads, _ "
                                                       "= tf.clip_by_global_norm(grads, X)`); remove this clip by "
                                                       "hand and run again"))
        else:
            edits.remove(line)


def _reads_gradients(script: Script, call: cst.Call) -> bool:
    """Whether the expression around ``call`` reads a variable assigned from ``....gradient(...)`` in its function."""
    function = script.function_of(call)
    gradients = set()
    for assign in script.find(cst.Assign, function):
        value = assign.value
        if (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value == "gradient"
                and script.function_of(assign) is function):
            gradients |= {dotted(t.target) for t in assign.targets}
    return any(dotted(name) in gradients for name in script.find(cst.Name, _outermost_value(script, call)))


def _clip_line(script: Script, call: cst.Call, function: str) -> cst.SimpleStatementLine | None:
    """The line holding ``call`` when it only clips a gradient list in place (one of the forms above)."""
    small, line, _ = script.statement_of(_outermost_value(script, call))
    if line is None or not isinstance(small, cst.Assign) or len(small.targets) != 1 or not call.args:
        return None
    target, value = small.targets[0].target, small.value
    clipped = dotted(call.args[0].value)
    if clipped is None:
        return None
    if function == "clip_by_global_norm":
        if value is call:
            pair = target.elements if isinstance(target, (cst.Tuple, cst.List)) else []
            ok = len(pair) == 2 and dotted(pair[0].value) == clipped and dotted(pair[1].value) == "_"
        else:
            index = value.slice[0].slice if isinstance(value, cst.Subscript) and len(value.slice) == 1 else None
            ok = (isinstance(index, cst.Index) and isinstance(index.value, cst.Integer)
                  and index.value.value == "0" and dotted(target) == clipped)
        return line if ok else None
    loop = value.for_in if isinstance(value, cst.ListComp) else None
    ok = (loop is not None and loop.inner_for_in is None and not loop.ifs and dotted(loop.target) == clipped
          and dotted(target) is not None and dotted(loop.iter) == dotted(target))
    return line if ok else None


def _outermost_value(script: Script, call: cst.Call) -> cst.CSTNode:
    """The expression a statement assigns when ``call`` is its clip (``call``, ``call[0]`` or ``[call for ...]``)."""
    parent = script.parent(call)
    if isinstance(parent, cst.Subscript) and parent.value is call:
        return parent
    if isinstance(parent, cst.ListComp) and parent.elt is call:
        return parent
    return call
