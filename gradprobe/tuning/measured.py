"""The tunes measured from a run: ``tune.json`` files beside it whose ``from`` names it.

``gradprobe tune --from RUN`` writes the run it derived its candidates from
into ``tune.json`` (``"from"``, an absolute path). A report of RUN looks for
tune directories in RUN's parent directory (the ``--out`` both were written
to by default) and shows what those trials measured beside the what-if.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gradprobe.errors import GradprobeError
from gradprobe.policies import parse_spec
from gradprobe.store.json_file import JSONFileError, MiB, read_json_file

TUNE_FILE = "tune.json"
MAX_TUNE_BYTES = 64 * MiB  # a tune of hundreds of trials is well under 1 MiB


@dataclass(frozen=True)
class MeasuredScore:
    """One candidate's trials in a tune: mean and sample sd of its score over ``trials`` seeds."""

    mean: float
    std: float
    trials: int
    status: str

    def text(self) -> str:
        """``0.0213 ± 0.004 (3 seeds)`` (``, exploding`` added when a trial's norms grew), or the status
        alone when a trial diverged or failed."""
        if not math.isfinite(self.mean):
            return self.status
        spread = f" ± {self.std:.2g}" if math.isfinite(self.std) else ""
        status = "" if self.status == "ok" else f", {self.status}"
        return f"{self.mean:.4g}{spread} ({self.trials} seed{'s' if self.trials != 1 else ''}{status})"


@dataclass(frozen=True)
class MeasuredTune:
    """What one ``gradprobe tune --from RUN`` measured: its choice, verdict and each candidate's score."""

    path: Path
    chosen: str | None
    verdict: str
    metric: str | None
    maximize: bool = False
    scores: dict[str | None, MeasuredScore] = field(default_factory=dict)

    def score_of(self, spec: str | None) -> MeasuredScore | None:
        """The measured score of ``spec`` (None: no clipping), if the tune tried it; specs match by the
        policy they parse to (``global-norm:max=1`` is ``global-norm:max=1,norm=2``)."""
        wanted = _canonical(spec)
        return next((score for tried, score in self.scores.items() if _canonical(tried) == wanted), None)

    def summary(self) -> str:
        """One sentence: where the tune is, what it scored and what it concluded."""
        score = f"the metric {self.metric!r}" if self.metric else "the smoothed final training loss"
        better = "higher" if self.maximize else "lower"
        return f"Measured by gradprobe tune in {self.path} (score: {score}, {better} is better): {self.verdict}."

    def to_dict(self) -> dict:
        """As in the JSON report."""
        return {"path": str(self.path), "chosen": self.chosen, "verdict": self.verdict, "metric": self.metric,
                "maximize": self.maximize, "scores": [{"spec": spec, "mean": s.mean, "std": s.std, "trials": s.trials, "status": s.status}
                           for spec, s in self.scores.items()]}


def measured_text(tunes: Sequence[MeasuredTune], spec: str, optimizer: int | None = None) -> str | None:
    """What the latest of ``tunes`` measured for ``spec`` (None: not tried, or one optimizer of several,
    which a tune does not clip separately)."""
    score = tunes[-1].score_of(spec) if tunes and optimizer is None else None
    return score.text() if score is not None else None


def tunes_from(run_path: Path) -> list[MeasuredTune]:
    """Every readable tune in ``run_path``'s parent directory that was run ``--from`` ``run_path``."""
    target = Path(run_path).resolve()
    out = []
    for file in sorted(target.parent.glob(f"*/{TUNE_FILE}"), key=lambda f: f.stat().st_mtime):
        document = _read(file)
        if document is None or not document.get("from") or Path(document["from"]).resolve() != target:
            continue
        scores = {row.get("spec"): MeasuredScore(_number(row.get("mean")), _number(row.get("std")),
                                                 int(row.get("trials") or 0), str(row.get("status") or "?"))
                  for row in document.get("ranking") or [] if isinstance(row, dict)}
        out.append(MeasuredTune(file.parent, document.get("chosen"), str(document.get("verdict") or ""),
                                document.get("metric"), bool(document.get("maximize")), scores))
    return out


def _canonical(spec: str | None) -> str | None:
    try:
        return str(parse_spec(spec)) if spec is not None else None
    except GradprobeError:
        return spec


def _read(file: Path) -> dict | None:
    try:
        document = read_json_file(file, MAX_TUNE_BYTES)
    except (OSError, JSONFileError):
        return None
    return document if isinstance(document, dict) else None


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan
