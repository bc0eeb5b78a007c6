"""``gradprobe tune``: choose a clip policy by short, seeded trials of the script.

:func:`gradprobe.tuning.tune.tune` (the package's ``tune`` is that module) profiles the script (or reuses a run),
derives candidate policies from the recommendations
(:mod:`~gradprobe.tuning.candidates`), runs each as a trial of the same
length (:mod:`~gradprobe.tuning.trials`), scores the trials by their recorded
loss and repeats the best ones to estimate run-to-run noise
(:mod:`~gradprobe.tuning.scoring`).
"""

from typing import TYPE_CHECKING

from gradprobe._lazy import lazy_names

if TYPE_CHECKING:
    from gradprobe.tuning.candidates import Candidate, derive_candidates
    from gradprobe.tuning.scoring import Summary, TrialScore, score_run
    from gradprobe.tuning.trials import Trial, TrialPlan
    from gradprobe.tuning.tune import TuneConfig, TuneObserver, TuneResult

_HOMES = {
    **dict.fromkeys(("Candidate", "derive_candidates"), "gradprobe.tuning.candidates"),
    **dict.fromkeys(("Summary", "TrialScore", "score_run"), "gradprobe.tuning.scoring"),
    **dict.fromkeys(("Trial", "TrialPlan"), "gradprobe.tuning.trials"),
    **dict.fromkeys(("TuneConfig", "TuneObserver", "TuneResult"), "gradprobe.tuning.tune"),
}
__all__ = ["Candidate", "Summary", "Trial", "TrialPlan", "TrialScore", "TuneConfig", "TuneObserver", "TuneResult",
           "derive_candidates", "score_run"]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
