"""An independent record of every optimizer step, for tests that check gradprobe against it.

Put this directory on ``PYTHONPATH`` and set ``INDEPENDENT_HOOK_OUT`` to a file: every process
then registers torch's own global optimizer hooks before anything else runs (gradprobe
included) and writes, at exit, per optimizer step the L2 norm of the gradients the step was
called with (before any clipping done inside the step's pre-hooks) and of the gradients the
update used (read after the step), computed as ``torch.nn.utils.clip_grad_norm_`` computes it: in
the gradients' own precision, per tensor and then over the tensors. ``layers`` holds each
parameter's norm under its name in the outermost module that owns it (``fc.weight``), or its
position in the optimizer's parameter groups when no module owns it. A step that takes a
closure (``step(closure)``: LBFGS, Lightning's automatic optimisation) is measured when the
closure's first evaluation in the step returns: the gradient the step starts from. No gradprobe
code is imported or shared.
"""

import atexit
import gc
import json
import os

OUT = os.environ.get("INDEPENDENT_HOOK_OUT")

if OUT:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    _seen = []
    _index = {}
    _names = {}  # id(parameter) -> name in its outermost module

    def _params(optimizer):
        return [p for g in optimizer.param_groups for p in g["params"]]

    def _learn_names(optimizer):
        """Name the optimizer's parameters by the outermost module holding them (the longest name)."""
        wanted = {id(p) for p in _params(optimizer)} - set(_names)
        if not wanted:
            return
        for module in [o for o in gc.get_objects() if issubclass(type(o), torch.nn.Module)]:  # not proxies
            for name, p in module.named_parameters(remove_duplicate=False):
                if id(p) in wanted and len(name) > len(_names.get(id(p), "")):
                    _names[id(p)] = name

    def _norms(optimizer):
        named = [(_names.get(id(p), str(k)), p.grad.detach()) for k, p in enumerate(_params(optimizer))
                 if p.grad is not None]
        norms = [torch.linalg.vector_norm(g) for _, g in named]
        total = float(torch.linalg.vector_norm(torch.stack(norms)))
        return total, {name: float(n) for (name, _), n in zip(named, norms)}

    def _measure(optimizer, number):
        pre, layers = _norms(optimizer)
        _seen.append({"optimizer": number, "pre": pre, "layers": layers})

    def _before(optimizer, args, kwargs):
        number = _index.setdefault(id(optimizer), len(_index))
        _learn_names(optimizer)
        at = 1 if args and args[0] is optimizer else 0  # the bound optimizer may come first
        closure = kwargs.get("closure", args[at] if len(args) > at and callable(args[at]) else None)
        if closure is None:
            _measure(optimizer, number)
            return None
        first = [True]

        def measured(*a, **k):
            loss = closure(*a, **k)
            if first[0]:
                first[0] = False
                _measure(optimizer, number)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": measured}
        return (*args[:at], measured, *args[at + 1:]), kwargs

    def _after(optimizer, args, kwargs):
        number = _index[id(optimizer)]
        last = next(s for s in reversed(_seen) if s["optimizer"] == number)
        last["used"] = _norms(optimizer)[0]

    register_optimizer_step_pre_hook(_before)
    register_optimizer_step_post_hook(_after)

    @atexit.register
    def _write():
        with open(OUT, "w") as f:
            json.dump(_seen, f)
