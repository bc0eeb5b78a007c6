"""What-if replays on a recorded run: what a policy would have done to one optimizer's steps.

Global policies replay every recorded step from the pre-clip global norms;
policies that need per-layer statistics are evaluated on the steps where
those were recorded (every ``--every`` steps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradprobe.errors import GradprobeError
from gradprobe.policies.base import Policy
from gradprobe.policies.replay import LAYER_INPUTS, Replay

if TYPE_CHECKING:  # the store's reader (pandas) is imported by the replay that reads a run
    from gradprobe.store.reader import Run
    from gradprobe.store.streams import Stream


def replay_stream(policy: Policy, stream: Stream, every_step: bool = False) -> Replay:
    """Replay ``policy`` on one optimizer's recorded ``stream``.

    A policy that needs per-layer statistics gets one row per sampled step,
    or with ``every_step`` one row per recorded step (``evaluated`` False on
    the steps without per-layer statistics).
    """
    steps = stream.steps
    index = steps["step"].to_numpy()
    norms = steps["global_norm"].to_numpy(dtype=np.float32)
    if not policy.replay_inputs:
        return policy.replay(norms, steps=index)
    grids = {argument: stream.pre_clip_matrix(column) for argument, column in LAYER_INPUTS.items()}
    if every_step:
        rows = np.searchsorted(stream.sampled, index)
        sampled = rows < len(stream.sampled)
        sampled[sampled] = stream.sampled[rows[sampled]] == index[sampled]
        for argument, grid in grids.items():
            full = np.full((len(index), grid.shape[1]), np.nan, dtype=np.float32)
            full[sampled] = grid[rows[sampled]]
            grids[argument] = full
    else:
        norms = steps.set_index("step")["global_norm"].reindex(stream.sampled).to_numpy(dtype=np.float32)
        index = stream.sampled
    return policy.replay(norms, steps=index, numel=stream.numel, **grids)


def replay_run(policy: Policy, run: Run, optimizer: int = 0, rank: int = 0) -> Replay:
    """Replay ``policy`` on the steps that ``optimizer`` took on ``rank`` in a recorded run, one row per
    recorded step (see :func:`replay_stream`)."""
    from gradprobe.store.streams import split_streams

    stream = next((s for s in split_streams(run, rank) if s.optimizer == optimizer), None)
    if stream is None or stream.steps.empty:
        raise GradprobeError(f"{run.name}: no steps recorded for optimizer {optimizer} on rank {rank}")
    return replay_stream(policy, stream, every_step=True)
