"""What every renderer shows: the report (findings, recommendations) and its summary numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gradprobe.analysis import SEVERITIES, Finding, Stream, diagnose, split_streams
from gradprobe.analysis import robust
from gradprobe.analysis.batch_blame import name_batches
from gradprobe.analysis.clip_saturation import CLIPPED_SCALE
from gradprobe.analysis import noise_scale as noise
from gradprobe.analysis.update_ratio import RULE_OF_THUMB, ratios
from gradprobe.analysis.recommend import STRATEGIES, Recommendation, recommend
from gradprobe.analysis.task_conflict import read_tasks, task_cosines, task_norms
from gradprobe.analysis.what_if_notes import what_if_notes
from gradprobe.reports.progress import Stages, quiet_stages
from gradprobe.store import Run
from gradprobe.tuning.measured import MeasuredTune, measured_text, tunes_from


def global_norm_stats(steps: pd.DataFrame) -> dict[str, float]:
    """Median, 95th percentile and maximum of the finite pre-clip global norms, and counts."""
    norms = steps["global_norm"].to_numpy(dtype=np.float64)
    finite = norms[np.isfinite(norms)]
    pick = (lambda f: float(f(finite))) if finite.size else (lambda f: float("nan"))
    return {
        "steps": int(len(steps)),
        "median": pick(np.median),
        "p95": pick(lambda a: np.percentile(a, 95)),
        "max": pick(np.max),
        "nonfinite_steps": int((~np.isfinite(norms)).sum()),
        "skipped_steps": int(steps["skipped"].sum()),
    }


def layer_stats(run: Run) -> pd.DataFrame:
    """One row per layer in depth order: name, numel, median/p95/max L2 norm, non-finite count."""
    table = run.layer_table[["name", "numel", "group"]].copy()
    layers = run.layers
    finite = layers[np.isfinite(layers["norm"])]
    grouped = finite.groupby("layer")["norm"]
    table["median"] = grouped.median()
    table["p95"] = grouped.quantile(0.95)
    table["max"] = grouped.max()
    table["nonfinite"] = layers.groupby("layer")["nonfinite"].sum()
    table["records"] = layers.groupby("layer").size()
    return table.fillna({"nonfinite": 0, "records": 0}).astype({"nonfinite": "int64", "records": "int64"})


@dataclass
class Report:
    """Everything a renderer shows about one run: the run, its optimizer streams, the findings
    (most severe first) and the clip recommendations."""

    run: Run
    streams: list[Stream]
    findings: list[Finding]
    recommendations: list[Recommendation] = field(default_factory=list)
    tasks: pd.DataFrame | None = None  # per-task gradient norms and cosines (``gradprobe.task_gradients``)
    groups: Sequence[str] = ()  # the user's ``NAME=GLOB`` layer groups (default: top-level modules)
    tunes: list[MeasuredTune] = field(default_factory=list)  # ``gradprobe tune --from`` this run, oldest first

    @property
    def what_if_notes(self) -> list[str]:
        """What to know to read the what-if: the replay caveat, clipping already in the recorded steps,
        a first choice that clips most steps, and what each tune of this run measured."""
        return what_if_notes(self.streams, self.run.meta, self.tunes, self.recommendations)

    def measured(self, rec: Recommendation) -> str | None:
        """The latest tune's measured score of ``rec``'s spec (None: no tune tried it)."""
        return measured_text(self.tunes, rec.spec, rec.optimizer)

    @property
    def name(self) -> str:
        """The run's name."""
        return self.run.name

    def counts(self) -> dict[str, int]:
        """Number of findings per severity."""
        return {level: sum(f.severity == level for f in self.findings) for level in SEVERITIES}


REPORT_STAGES = 4


def build_report(run: Run, groups: Sequence[str] = (), stages: Stages | None = None,
                 strategies: Sequence[str] = STRATEGIES, percentile: float | None = None) -> Report:
    """Read ``run``, split it into optimizer streams, diagnose it and replay clip recommendations
    (:data:`REPORT_STAGES` stages). ``groups``: ``NAME=GLOB`` layer groups for the imbalance check;
    ``strategies`` / ``percentile``: as for :func:`~gradprobe.analysis.recommend`."""
    stages = stages or quiet_stages()
    with stages.stage("reading the run"):
        _ = (run.steps, run.layers)
        tasks = read_tasks(run)
    with stages.stage("organising per-layer statistics"):
        streams = split_streams(run)
    with stages.stage("diagnosing"):
        findings = diagnose(streams, groups, tasks, run.meta)
        name_batches(findings, run.batches, str(run.path), Path(run.meta.get("script") or "train.py").name)
    with stages.stage("replaying clip recommendations"):
        recommendations = recommend(streams, findings, strategies, percentile)
    return Report(run, streams, findings, recommendations, tasks, tuple(groups), tunes_from(run.path))


def optimizer_label(run: Run, optimizer: int) -> str:
    """``optimizer 0 (Adam)``: the optimizer's index and class as recorded."""
    known = {o.get("index"): o for o in run.meta.get("optimizers") or [] if isinstance(o, dict)}
    cls = (known.get(optimizer) or {}).get("class")
    return f"optimizer {optimizer}" + (f" ({cls})" if cls else "")


def loss_stats(steps: pd.DataFrame) -> dict[str, float] | None:
    """First, last and minimum recorded loss (``None`` when the loss was never captured)."""
    loss = steps["loss"].to_numpy(dtype=np.float64)
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        return None
    return {"first": float(finite[0]), "last": float(finite[-1]), "min": float(finite.min())}


def clip_stats(steps: pd.DataFrame) -> dict[str, float] | None:
    """How often recorded clipping fired (``None`` when no clip threshold was recorded)."""
    threshold = steps["clip_threshold"].to_numpy(dtype=np.float64)
    active = np.isfinite(threshold)
    if not active.any():
        return None
    scale = steps["clip_scale"].to_numpy(dtype=np.float64)[active]
    return {
        "steps": int(active.sum()),
        "clipped_fraction": float(np.mean(scale < CLIPPED_SCALE)),
        "mean_scale": float(np.nanmean(scale)),
        "threshold_median": float(np.median(threshold[active])),
    }


def task_stats(tasks: pd.DataFrame | None) -> list[dict]:
    """One row per task (median and max gradient norm on the shared parameters) and per pair of tasks
    (median cosine, share of negative cosines), each with its series over the sampled steps."""
    if tasks is None or not len(tasks):
        return []
    rows = []
    for name, series in task_norms(tasks).items():
        values = series.dropna().to_numpy(dtype=np.float64)
        rows.append({"series": f"norm {name}", "median": float(np.median(values)) if values.size else np.nan,
                     "max": float(values.max()) if values.size else np.nan, "negative": None, "values": values})
    for pair, series in task_cosines(tasks).items():
        values = series.dropna().to_numpy(dtype=np.float64)
        rows.append({"series": f"cosine {pair}", "median": float(np.median(values)) if values.size else np.nan,
                     "max": float(values.max()) if values.size else np.nan,
                     "negative": float(np.mean(values < 0)) if values.size else None, "values": values})
    return rows


def update_ratio_stats(stream: Stream) -> dict | None:
    """The update-to-weight ratios of ``stream``'s sampled steps: per layer (``layers``, median over
    steps, in the stream's layer order), their median, and each step's median over layers
    (``over_time``); None when the run measured no update."""
    grid = ratios(stream)
    if grid is None:
        return None
    per_layer = robust.nanmedian(grid, axis=0)
    return {"layers": per_layer, "median": float(robust.nanmedian(per_layer)),
            "over_time": robust.nanmedian(grid, axis=1), "rule_of_thumb": RULE_OF_THUMB}


def noise_stats(run: Run, stream: Stream) -> dict | None:
    """The gradient noise scale of ``stream``'s accumulating steps (:mod:`gradprobe.analysis.noise_scale`):
    the latest estimate with its advice, and ``over_time`` (B_simple at the steps that have one); None
    without one."""
    frame = noise.run_noise_scale(run, stream.optimizer)
    latest = noise.summary(frame)
    if latest is None:
        return None
    b_simple = frame["b_simple"].to_numpy(dtype=np.float64)
    return {**latest, "over_time": b_simple[np.isfinite(b_simple)]}  # NaN: no gradient signal above the noise yet
