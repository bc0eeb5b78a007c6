"""Name the batches behind spike and non-finite findings, from the run's ``batches`` table.

A spike finding names the batches of its spike steps (at most
:data:`MAX_NAMED_STEPS`, the worst first); a non-finite finding those of its
first non-finite step. Each named batch is one entry of the finding's
``batches``: ``step``, ``optimizer``, ``loader``, ``epoch``, ``kind``
(``indices``, ``positions`` or ``fingerprint``), ``count`` and ``samples``
(range text such as ``4480-4543``). The advice gains the sentence, e.g. "step
70: samples 4480-4543 of loader `train_loader`", and the rerun that drops the
samples (:func:`skip_samples` is what ``gradprobe report`` writes for it).
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from gradprobe.analysis.findings import Finding
from gradprobe.store.sample_ranges import parse_ranges
from gradprobe.store.skip_samples_file import SKIP_FILE

MAX_NAMED_STEPS = 5
MAX_SHOWN_SAMPLES = 80  # characters of range text shown in the advice before it is cut


def _blamed_steps(finding: Finding) -> list[int]:
    if finding.kind == "spike":
        worst = finding.evidence.get("max_step")
        others = [s for s in finding.evidence.get("spike_steps", []) if s != worst]
        return ([worst] if worst is not None else []) + others[: MAX_NAMED_STEPS - 1]
    if finding.kind == "nonfinite":
        return [finding.steps[0]]
    return []


def describe(batch: dict) -> str:
    """``step 70: samples 4480-4543 of loader `train_loader` (epoch 1)``, or the fingerprint."""
    if batch["kind"] == "fingerprint":
        return f"step {batch['step']}: the batch {batch['samples']} (no DataLoader)"
    samples = batch["samples"]
    if len(samples) > MAX_SHOWN_SAMPLES:
        samples = samples[:MAX_SHOWN_SAMPLES].rsplit(",", 1)[0] + ",..."
    what = "sample positions" if batch["kind"] == "positions" else "samples"
    return f"step {batch['step']}: {what} {samples} of loader `{batch['loader']}` (epoch {batch['epoch']})"


def name_batches(findings: list[Finding], batches: pd.DataFrame, run_path: str | None = None,
                 script: str | None = None) -> None:
    """Attach to each spike and non-finite finding the batches of its steps, and say so in its advice."""
    if batches.empty:
        return
    by_step = {key: frame for key, frame in batches.groupby(["optimizer", "step"], sort=False)}
    for finding in findings:
        optimizer = finding.evidence.get("optimizer")
        named = []
        for step in _blamed_steps(finding):
            frame = by_step.get((optimizer, step))
            if frame is None:
                continue
            named.extend({"step": int(step), "optimizer": int(optimizer), "loader": str(row.loader),
                          "epoch": int(row.epoch), "kind": str(row.kind), "count": int(row.count),
                          "samples": str(row.samples)} for row in frame.itertuples(index=False))
        if not named:
            continue
        finding.batches = named
        text = "; ".join(describe(b) for b in named[:MAX_NAMED_STEPS])
        finding.advice += f" Data: {text}."
        if skip_samples([finding]):
            where = f"{run_path}/{SKIP_FILE}" if run_path else SKIP_FILE
            finding.advice += (f" To test whether the data caused it, rerun without those samples: "
                               f"`gradprobe run --skip-samples {where} {script or 'train.py'}`.")


def skip_samples(findings: list[Finding]) -> dict[str, list[int]]:
    """The dataset indices the findings' named batches hold, per loader (positions and fingerprints
    cannot be skipped and are left out)."""
    samples: dict[str, set[int]] = defaultdict(set)
    for finding in findings:
        for batch in finding.batches:
            if batch["kind"] == "indices":
                samples[batch["loader"]].update(parse_ranges(batch["samples"]))
    return {loader: sorted(indices) for loader, indices in samples.items()}
