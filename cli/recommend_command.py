"""``gradprobe recommend``: clip specs from a recorded run, each with a what-if replay.

The command's ``--strategy`` choices come from the policy registry, which
imports numpy, so the root command group imports this module only when the
command runs or help lists it (:class:`gradprobe.cli.app.Commands`).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from gradprobe.errors import visible
from gradprobe.policies import strategies
from gradprobe.store import DEFAULT_ROOT

# Recommendation strategies of ``recommend``, as the policy registry lists them.
Strategy = Enum("Strategy", {name: name for name in strategies()}, type=str)


def recommend(
    run: Optional[str] = typer.Argument(None, help="Run directory or name (default: the latest run)."),
    root: Path = typer.Option(Path(DEFAULT_ROOT), "--root", help="Where to look for run names."),
    strategy: List[Strategy] = typer.Option([], "--strategy", "-s", help="Strategy (repeatable; default: all, "
                                            "percentile first)."),
    percentile: Optional[float] = typer.Option(None, "--percentile", "-p", help="Percentile P for percentile "
                                               "(default 95), autoclip (10), agc, value and layer (95)."),
    as_json: bool = typer.Option(False, "--json", help="Print the recommendations as JSON instead of a table."),
) -> None:
    """Turn the recorded gradient norms into clip specs, each with a what-if replay.

    [bold]gradprobe recommend RUN[/bold]
    [bold]gradprobe recommend RUN --strategy zclip[/bold]
    [bold]gradprobe recommend RUN --strategy percentile --percentile 99[/bold]

    Every spec is replayed on the recorded steps with the clip policy's own
    math: how often it would have clipped and by how much (mean and minimum
    scale). Writes RUN/recommendation.json, which `gradprobe run --clip-from`
    reads (the first recommendation is the one to use).
    """
    import json

    from gradprobe.analysis import STRATEGIES, diagnose, recommend as recommend_specs, split_streams
    from gradprobe.analysis.findings import plain_json
    from gradprobe.analysis.recommend import first_choices, save_recommendations
    from gradprobe.analysis.what_if_notes import what_if_notes
    from gradprobe.reports.progress import stages
    from gradprobe.reports.suggest import clip_commands
    from gradprobe.reports.terminal import render_recommendations
    from gradprobe.store import resolve_run
    from gradprobe.tuning.measured import measured_text, tunes_from

    target = resolve_run(run, root)
    chosen = [s.value for s in strategy] or list(STRATEGIES)
    with stages(4 + len(chosen)) as progress:
        with progress.stage("reading the run"):
            streams = split_streams(target)
        with progress.stage("diagnosing"):
            findings = diagnose(streams)
        recommendations = []
        if not strategy and percentile is None:
            with progress.stage("choosing the first spec"):
                recommendations += first_choices(streams, findings)
        for name in chosen:
            with progress.stage(f"replaying {name}"):
                recommendations += recommend_specs(streams, findings, [name], percentile)
        with progress.stage("writing recommendation.json"):
            path = save_recommendations(target, recommendations)
    if as_json:
        print(json.dumps({"recommendations": [plain_json(r.to_dict()) for r in recommendations]}, indent=2))
    else:
        tunes = tunes_from(target.path)
        render_recommendations(recommendations, notes=what_if_notes(streams, target.meta, tunes, recommendations),
                               measured=lambda rec: measured_text(tunes, rec.spec, rec.optimizer))
    print(f"gradprobe: wrote {visible(path)}", file=sys.stderr)
    if recommendations and target.meta.get("script"):
        args = (target.meta.get("argv") or [None])[1:]
        use = clip_commands(path.parent, target.meta["script"], args)[0]
        print(f"gradprobe: use it: {visible(use)}", file=sys.stderr)
