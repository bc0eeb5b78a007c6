"""Run every detector over every optimizer stream of a run."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import pandas as pd

from gradprobe.analysis import clip_saturation, dead_layer, explosion, imbalance, nonfinite, spike, task_conflict
from gradprobe.analysis import clip_after_step, rank_divergence, short_run, stalled_layer, update_ratio, vanishing
from gradprobe.analysis import failed_to_learn, loss_divided_twice
from gradprobe.analysis.findings import Finding
from gradprobe.analysis.groups import check_groups, parse_groups
from gradprobe.store.streams import Stream, split_streams
from gradprobe.store import Run

DETECTORS: dict[str, Callable[[Stream], list[Finding]]] = {
    "nonfinite": nonfinite.detect,
    "explosion": explosion.detect,
    "spike": spike.detect,
    "vanishing": vanishing.detect,
    "dead_layer": dead_layer.detect,
    "stalled_layer": stalled_layer.detect,
    "clip_saturation": clip_saturation.detect,
    "clip_after_step": clip_after_step.detect,
    "loss_divided_twice": loss_divided_twice.detect,
    "rank_divergence": rank_divergence.detect,
    "update_ratio": update_ratio.detect,
    "failed_to_learn": failed_to_learn.detect,
}


def diagnose(run: Run | Sequence[Stream], groups: Sequence[str] = (),
             tasks: pd.DataFrame | None = None, meta: dict | None = None) -> list[Finding]:
    """All findings of ``run`` (or of its already split streams), most severe first, then by step.

    ``groups``: user layer groups as ``NAME=GLOB`` for the imbalance detector
    (default: the recorded groups, i.e. top-level modules). ``tasks``: the
    run's ``tasks`` table for the task detectors (read from ``run`` when not given).
    """
    if isinstance(run, Run) and tasks is None:
        tasks = task_conflict.read_tasks(run)
    streams = split_streams(run) if isinstance(run, Run) else list(run)
    if isinstance(run, Run):
        meta = run.meta
    user_groups = parse_groups(groups) if groups else None
    if user_groups:
        check_groups(user_groups, [name for stream in streams for name in stream.names])
    findings: list[Finding] = []
    for stream in streams:
        for detect in DETECTORS.values():
            findings.extend(detect(stream))
        findings.extend(imbalance.detect(stream, user_groups))
    findings.extend(task_conflict.detect(tasks))
    findings.extend(short_run.detect(streams, meta))
    return sorted(one_finding_per_cause(findings), key=lambda f: (-f.rank, f.steps[0]))


CONSEQUENCES = ("explosion", "spike", "dead_layer", "vanishing", "imbalance")


def one_finding_per_cause(findings: list[Finding]) -> list[Finding]:
    """Drop the findings of an optimizer that another finding of it already explains.

    * After NaN/Inf reached the weights (a critical non-finite finding), what starts
      later (norms that blow up or die, spikes) is its consequence, not a second problem.
    * A starved group is also "far below the rest" for the vanishing detector, and
      in a plain ``nn.Sequential`` (one group per layer) vanishing gradients are
      also an imbalance between those one-layer groups. When vanishing flags only
      layers of the starved group, vanishing goes (the group is starved); when the
      starved group is among the vanishing layers, the imbalance goes (the layers
      vanish with depth).
    * Layers too starved of gradient to move are vanishing, not stalled or frozen (a float32
      weight does not change under an update far below its rounding).
    * Layers whose measured update is zero (``frozen_layer``) that the stalled-layer check already
      names (their parameter norm never moved) are reported once, as stalled.
    * A loss that blew up and never recovered (``failed_to_learn``) explains the vanishing, dead or
      unbalanced layers and the spikes of its optimizer: they go. When an explosion (warning or
      worse) or a critical NaN/Inf of the optimizer is found, that is the finding, and it goes.
    * Large steps (``update_ratio``) are a warning when the loss does not improve; when an
      explosion, critical NaN/Inf or vanishing of the same optimizer already explains why it does
      not, they are ``info`` beside that finding, which carries the advice.
    """
    drop = set()
    broken = {f.evidence["optimizer"]: f.steps[0] for f in findings
              if f.kind == "nonfinite" and f.severity == "critical"}
    for f in findings:
        start = broken.get(f.evidence["optimizer"])
        if f.kind in CONSEQUENCES and start is not None and f.steps[0] > start:
            drop.add(id(f))
    explained = {f.evidence["optimizer"] for f in findings
                 if (f.kind == "explosion" and f.severity != "info") or f.evidence["optimizer"] in broken}
    wrecked = {f.evidence["optimizer"] for f in findings
               if f.kind == "failed_to_learn" and f.evidence["optimizer"] not in explained}
    for f in findings:
        if (f.kind == "failed_to_learn" and f.evidence["optimizer"] in explained) \
                or (f.kind in CONSEQUENCES and f.evidence["optimizer"] in wrecked):
            drop.add(id(f))
    stalled = {(f.evidence["optimizer"], name) for f in findings if f.kind == "stalled_layer" for name in f.layers}
    for f in findings:
        if f.kind == "frozen_layer" and all((f.evidence["optimizer"], name) in stalled for name in f.layers):
            drop.add(id(f))
    for a in findings:
        for b in findings:
            if b.kind != "vanishing" or a.evidence["optimizer"] != b.evidence["optimizer"]:
                continue
            if a.kind in ("stalled_layer", "frozen_layer") and set(a.layers) & set(b.layers):
                drop.add(id(a))
            if a.kind != "imbalance":
                continue
            starved, vanishing = set(a.layers), set(b.layers)
            if vanishing and vanishing <= starved:
                drop.add(id(b))
            elif starved & vanishing:
                drop.add(id(a))
    return [_beside_the_cause(f, findings) for f in findings if id(f) not in drop]


EXPLAIN_A_STALLED_LOSS = ("explosion", "nonfinite", "vanishing", "failed_to_learn")


def _beside_the_cause(finding: Finding, findings: list[Finding]) -> Finding:
    """``finding`` as info when it is an update_ratio warning whose stalled or rising loss another
    finding of its optimizer explains (see :func:`one_finding_per_cause`)."""
    if finding.kind != "update_ratio" or finding.severity != "warning":
        return finding
    cause = next((f for f in findings if f.kind in EXPLAIN_A_STALLED_LOSS and f.severity != "info"
                  and f.evidence["optimizer"] == finding.evidence["optimizer"]), None)
    if cause is None:
        return finding
    return replace(finding, severity="info",
                   advice=f"{finding.advice} The {cause.kind.replace('_', ' ')} finding explains the loss; "
                          "its advice comes first.")
