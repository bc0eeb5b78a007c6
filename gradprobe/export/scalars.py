"""The scalar series a run exports, named the same way for every target.

Tags, for a run with one optimizer on one process:

* ``grad_norm/pre_clip``: L2 norm of all gradients before clipping;
* ``grad_norm/post_clip``: L2 norm of the gradients the optimizer received;
* ``clip/scale``: factor the gradients were multiplied by (1: not clipped);
* ``clip/threshold``: the clip threshold in force (steps without one are left out);
* ``loss``: the training loss of the step (steps where it is unknown are left out);
* ``layer_grad_norm/<layer>``: one layer's gradient L2 norm (on the recorded steps).

With several optimizers every tag is prefixed with the optimizer,
``opt<index>-<class>/`` (``opt1-SGD/grad_norm/pre_clip``), and with several
processes with the rank, ``rank<r>/``. The step is the optimizer's own step
index and the wall time the one recorded at that step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradprobe.store import Run

STEP_TAGS = {
    "global_norm": ("grad_norm/pre_clip", "L2 norm of all gradients before clipping"),
    "global_norm_post": ("grad_norm/post_clip", "L2 norm of the gradients the optimizer received"),
    "clip_scale": ("clip/scale", "Factor the gradients were multiplied by (1: not clipped)"),
    "clip_threshold": ("clip/threshold", "Clip threshold in force"),
    "loss": ("loss", "Training loss of the step"),
}
LAYER_TAG = "layer_grad_norm/"
LAYER_DESCRIPTION = "L2 norm of this layer's gradient before clipping"
COLUMNS = ["tag", "step", "time", "value", "description"]


def _optimizer_labels(run: Run) -> dict[int, str]:
    labels = {}
    for entry in run.meta.get("optimizers") or []:
        cls = entry.get("class")
        labels[int(entry["index"])] = f"opt{entry['index']}-{cls}" if cls else f"opt{entry['index']}"
    return labels


def _prefixes(frame: pd.DataFrame, run: Run) -> pd.Series:
    """Per row: the tag prefix naming its optimizer and rank, where the run has several."""
    prefix = pd.Series("", index=frame.index, dtype=object)
    if run.steps["optimizer"].nunique() > 1:
        labels = _optimizer_labels(run)
        prefix += frame["optimizer"].map(lambda o: labels.get(int(o), f"opt{o}") + "/")
    if run.steps["rank"].nunique() > 1:
        prefix = frame["rank"].map(lambda r: f"rank{r}/") + prefix
    return prefix


def scalar_series(run: Run) -> pd.DataFrame:
    """Every exported value as one row: ``tag``, ``step``, ``time`` (Unix s), ``value``, ``description``.

    Non-finite values that mean "not recorded" (an unknown loss, no clip
    threshold) are left out; a non-finite gradient norm is kept, as it is
    what the run recorded. Rows are ordered by step, then tag.
    """
    steps = run.steps
    prefix = _prefixes(steps, run)
    parts = []
    for column, (tag, description) in STEP_TAGS.items():
        keep = steps[column].notna() if column in ("loss", "clip_threshold") else slice(None)
        rows = steps.loc[keep]
        parts.append(pd.DataFrame({
            "tag": prefix.loc[rows.index] + tag, "step": rows["step"], "time": rows["time"],
            "value": rows[column].astype(np.float64), "description": description,
        }))
    layers = run.layers
    if len(layers):
        times = steps.set_index(["optimizer", "rank", "step"])["time"]
        keys = pd.MultiIndex.from_frame(layers[["optimizer", "rank", "step"]])
        parts.append(pd.DataFrame({
            "tag": _prefixes(layers, run) + LAYER_TAG + layers["name"].astype(str),
            "step": layers["step"], "time": times.reindex(keys).to_numpy(),
            "value": layers["norm"].astype(np.float64), "description": LAYER_DESCRIPTION,
        }))
    series = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    return series.sort_values(["step", "tag"], kind="stable").reset_index(drop=True)[COLUMNS]
