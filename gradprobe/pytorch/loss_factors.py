"""The constant divisors a script applied to its loss just before ``backward()``.

With gradient accumulation a script divides each micro-batch's loss by the
number of micro-batches K, so that the accumulated gradient is their mean. A
common slip divides twice (``loss = loss / K`` in the loss function and again
in the loop, or in ``training_step`` while Lightning also divides): the
gradient comes out K times too small, which under SGD is a learning rate cut
by K and under any optimizer makes the recorded loss and norms K times too
small. The run's numbers alone cannot tell that from a smaller learning rate,
but the autograd graph can: :func:`loss_divisors` walks from the loss down its
chain of multiplications and divisions by host constants (Python numbers,
which torch keeps as CPU scalars in the graph) and returns each divisor. It
reads nothing from the device (a factor held on an accelerator ends the walk),
and a division right above a ``sum`` is the script's own mean over the batch,
not a scaling, so it is left out.
"""

from __future__ import annotations

import torch

MAX_NODES = 8  # a loss is scaled a few times at most; the walk never goes deeper


def _constant(node, name: str) -> float | None:
    """The host scalar ``node`` multiplies (``Mul``) or divides (``Div``) by, if it is one."""
    other = getattr(node, "_saved_other", None)
    if not isinstance(other, torch.Tensor) or other.device.type != "cpu" or other.numel() != 1 \
            or other.requires_grad or getattr(node, "_saved_self", None) is not None:
        return None
    value = float(other)
    if value == 0:
        return None
    return value if name.startswith("Div") else 1.0 / value


def loss_divisors(loss: torch.Tensor) -> tuple[float, ...]:
    """The divisors applied to ``loss`` by constant scalings at the top of its graph, outermost first
    (``(loss_fn(out, y) / 4) / 4`` gives ``(4.0, 4.0)``; a multiplication by 0.25 counts as a division
    by 4). Empty when the loss was not scaled."""
    divisors: list[float] = []
    node = loss.grad_fn
    for _ in range(MAX_NODES):
        if node is None:
            break
        name = node.name()
        if not name.startswith(("DivBackward", "MulBackward")):
            if name.startswith("SumBackward") and divisors:
                divisors.pop()  # sum(...) / n: the script's mean over its batch
            break
        divisor = _constant(node, name)
        inputs = [fn for fn, _ in node.next_functions if fn is not None]
        if divisor is None or len(inputs) != 1:
            break
        divisors.append(divisor)
        node = inputs[0]
    return tuple(divisors)


def divided_twice(divisors_per_pass: list[tuple[float, ...]]) -> bool:
    """Whether every backward pass of a step of K > 1 passes divided its loss by K at least twice."""
    passes = len(divisors_per_pass)
    if passes < 2:
        return False
    return all(sum(1 for d in divisors if abs(d - passes) <= 1e-6 * passes) >= 2 for divisors in divisors_per_pass)
