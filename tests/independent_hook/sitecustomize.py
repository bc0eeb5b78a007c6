"""An independent record of every optimizer step, for tests that check gradprobe against it.

Put this directory on ``PYTHONPATH`` and set ``INDEPENDENT_HOOK_OUT`` to a file: every process
then registers torch's own global optimizer hooks before anything else runs (gradprobe
included) and writes, at exit, per optimizer step the L2 norm of the gradients the step was
called with (before any clipping done inside the step's pre-hooks) and of the gradients the
update used (read after the step), computed as ``torch.nn.utils.clip_grad_norm_`` computes it: in
the gradients' own precision, per tensor and then over the tensors. No gradprobe code is imported
or shared.
"""

import atexit
import json
import os

OUT = os.environ.get("INDEPENDENT_HOOK_OUT")

if OUT:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    _seen = []
    _index = {}

    def _norm(optimizer):
        grads = [p.grad.detach() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def _before(optimizer, args, kwargs):
        number = _index.setdefault(id(optimizer), len(_index))
        _seen.append({"optimizer": number, "pre": _norm(optimizer)})

    def _after(optimizer, args, kwargs):
        number = _index[id(optimizer)]
        last = next(s for s in reversed(_seen) if s["optimizer"] == number)
        last["used"] = _norm(optimizer)

    register_optimizer_step_pre_hook(_before)
    register_optimizer_step_post_hook(_after)

    @atexit.register
    def _write():
        with open(OUT, "w") as f:
            json.dump(_seen, f)
