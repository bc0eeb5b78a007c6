"""Outcome benchmark: does following gradprobe's advice train better than the usual defaults?

For every task in ``benchmarks/outcomes/tasks/`` (small training scripts where
clipping matters, and one where it should not be used), it

1. profiles the script once (seed 0) and takes ``gradprobe recommend``'s first spec;
2. runs ``gradprobe tune --from`` that profile, scored on the task's held-out metric;
3. trains with every policy: no clipping, ``global-norm:max=1`` (the value
   everyone types), the paper defaults AutoClip p=10 and ZClip z=2.5,
   recommend's first spec and tune's choice, with seeds 1..N each;

and reports the held-out metric (lower is better; mean ± sd over the seeds, a
diverged seed counts as infinite) with its ratio to the best fixed reference
(the best of no clipping, 1.0, AutoClip and ZClip), and whether the advice is
within noise of that best (Welch's one-sided t-test, p >= 0.05 against "worse").

    python benchmarks/outcomes/run.py                   # every task, 3 seeds
    python benchmarks/outcomes/run.py --tasks deep_rnn --seeds 2

Writes ``benchmarks/results/outcomes.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

TASKS = Path(__file__).parent / "tasks"
RESULTS = Path(__file__).parents[1] / "results" / "outcomes.json"
METRIC = re.compile(r"val_metric=(\S+)")
REFERENCES = {"no clipping": None, "global-norm 1.0": "global-norm:max=1", "AutoClip p=10": "autoclip:p=10",
              "ZClip z=2.5": "zclip:z=2.5"}
ALPHA = 0.05


def gradprobe(*args: str, cwd: Path, seed: int | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m gradprobe ARGS`` quietly; raise with its stderr if it fails."""
    command = [sys.executable, "-m", "gradprobe", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def metric(stdout: str) -> float:
    """The task's held-out metric from its output; a non-finite one counts as infinite (diverged)."""
    found = METRIC.findall(stdout)
    value = float(found[-1]) if found else math.nan
    return value if math.isfinite(value) else math.inf


def train(script: Path, spec: str | None, seed: int, work: Path) -> float:
    """One training of ``script`` under ``spec`` (None: no clipping) with ``seed``; its held-out metric."""
    mode = ["profile"] if spec is None else ["run", "--clip", spec]
    result = gradprobe(*mode, "--quiet", "--out", str(work / "runs"), "--seed", str(seed), str(script), cwd=work)
    return metric(result.stdout)


def advice(script: Path, work: Path, candidates: str | None = None) -> dict:
    """Profile once with seed 0; recommend's first spec and tune's choice (None: no clipping) among
    ``candidates`` (tune's own grid by default)."""
    gradprobe("profile", "--quiet", "--out", str(work / "profile"), "--name", "p", "--seed", "0", str(script),
              cwd=work)
    run = work / "profile" / "p"
    recommended = json.loads(gradprobe("recommend", str(run), "--json", cwd=work).stdout)["recommendations"]
    first = recommended[0] if recommended else None
    started = time.monotonic()
    grid = ["--candidates", candidates] if candidates else []
    gradprobe("tune", "--from", str(run), "--repeats", "2", *grid, "--metric", METRIC.pattern, "--out",
              str(work / "tune"), "--name", "t", str(script), cwd=work)
    tuned = json.loads((work / "tune" / "t" / "tune.json").read_text())
    return {"recommend": first["spec"] if first else None,
            "recommend_rationale": first.get("rationale") if first else None,
            "tune": tuned["chosen"], "tune_verdict": tuned["verdict"], "tune_seconds": time.monotonic() - started}


def summary(values: list[float]) -> dict:
    """Mean and sample standard deviation (infinite when a seed diverged)."""
    array = np.asarray(values, dtype=np.float64)
    finite = bool(np.isfinite(array).all())
    return {"values": values, "mean": float(array.mean()) if finite else math.inf,
            "sd": float(array.std(ddof=1)) if finite and len(array) > 1 else math.nan}


def within_noise(candidate: list[float], best: list[float]) -> bool:
    """Whether ``candidate`` is not significantly worse than ``best`` (lower is better)."""
    a, b = np.asarray(candidate), np.asarray(best)
    if not np.isfinite(a).all():
        return not np.isfinite(b).all()
    if np.mean(a) <= np.mean(b):
        return True
    if len(a) < 2 or (a.std() == 0 and b.std() == 0):
        return False
    return bool(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue >= ALPHA)


def run_task(script: Path, seeds: list[int], work: Path, candidates: str | None = None) -> dict:
    """Everything above for one task."""
    started = time.monotonic()
    chosen = advice(script, work, candidates)
    policies = {**REFERENCES, "recommend": chosen["recommend"], "tune": chosen["tune"]}
    trained: dict[str | None, list[float]] = {}
    for spec in dict.fromkeys(policies.values()):
        trained[spec] = [train(script, spec, seed, work) for seed in seeds]
    rows = {name: {"spec": spec, **summary(trained[spec])} for name, spec in policies.items()}
    best_name = min(REFERENCES, key=lambda name: rows[name]["mean"])
    best = rows[best_name]
    for row in rows.values():
        row["ratio"] = row["mean"] / best["mean"] if math.isfinite(best["mean"]) and best["mean"] > 0 else math.nan
        row["within_noise_of_best"] = within_noise(row["values"], best["values"])
    return {"task": script.stem, "doc": _first_line(script), "best_reference": best_name, "policies": rows,
            **chosen, "seconds": time.monotonic() - started}


def _first_line(script: Path) -> str:
    source = script.read_text()
    return source.split('"""')[1].strip().splitlines()[0] if source.startswith('"""') else script.stem


def table(results: list[dict]) -> str:
    """A Markdown table: one row per task, one column per policy (mean ± sd, ratio to the best reference)."""
    names = [*REFERENCES, "recommend", "tune"]
    lines = ["| task | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for result in results:
        cells = []
        for name in names:
            row = result["policies"][name]
            text = "diverged" if not math.isfinite(row["mean"]) else f"{row['mean']:.3g} ± {row['sd']:.2g}"
            ratio = "" if not math.isfinite(row["ratio"]) else f" ({row['ratio']:.2f}x)"
            mark = "" if row["within_noise_of_best"] else " ✗"
            cells.append(text + ratio + mark)
        lines.append(f"| {result['task']} | " + " | ".join(cells) + " |")
    lines += ["", "specs: " + "; ".join(f"{r['task']}: recommend `{r['recommend'] or 'none'}`, tune "
                                         f"`{r['tune'] or 'none'}`" for r in results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", help="comma-separated task names (default: every script in tasks/)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per policy (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--tune-candidates", help="tune only these comma-separated specs ('none' for no clipping; "
                                                  "default: tune's own grid), for a quicker run")
    args = parser.parse_args(argv)
    scripts = sorted(TASKS.glob("*.py"))
    if args.tasks:
        wanted = args.tasks.split(",")
        scripts = [s for s in scripts if s.stem in wanted]
        if len(scripts) != len(wanted):
            parser.error(f"unknown task in {args.tasks}; tasks: {', '.join(s.stem for s in TASKS.glob('*.py'))}")
    seeds = list(range(1, args.seeds + 1))
    results = []
    for script in scripts:
        with tempfile.TemporaryDirectory() as work:
            results.append(run_task(script, seeds, Path(work), args.tune_candidates))
        print(f"{script.stem}: {results[-1]['seconds']:.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": seeds, "tasks": results}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
