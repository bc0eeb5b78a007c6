"""Third-party training loops, recorded and clipped, checked by a hook that shares no code with gradprobe.

Each script in ``loops/`` re-creates the loop of a well-known training script
(pytorch/examples MNIST, DCGAN and the LBFGS time-sequence example, nanoGPT's
accumulation loop, an Accelerate loop, the AMP recipe's GradScaler accumulation,
``torch.compile``, Lightning's automatic and manual optimisation, a Hugging Face
``Trainer``) unchanged. Every script runs twice, under ``gradprobe profile`` and under
``gradprobe run --clip global-norm:max=C`` with C the median norm the profile
recorded over all optimizers (so that clipping changes part of the steps), each time with the independent hook of
``tests/independent_hook`` (torch's own global optimizer step hooks, installed
through ``sitecustomize`` before gradprobe loads) noting, per optimizer step,
the norm of the gradients the step was called with and of those its update
used. Per loop it reports:

* whether gradprobe recorded as many steps, per optimizer, as the optimizers took;
* the largest relative error of the recorded pre-clip global norm against the hook's;
* per layer, at the sampled steps: the rows compared, whether every recorded name is the
  hook's name of that parameter (the same, or it inside a wrapper), whether each step has as
  many rows as parameters with a gradient, and the largest relative error of the norms;
* under ``--clip``: the largest relative error of the gradient the update used
  against the policy's formula ``g * min(1, C / (||g|| + 1e-6))`` on the hook's
  pre-clip norm, and of the recorded post-clip norm against the hook's.

LBFGS updates with later gradients than the recorded one, so ``run --clip`` records without
clipping it: there the used-vs-policy figure checks that nothing was clipped.

Run from the repository root (about two minutes)::

    python benchmarks/truth/run.py          # writes benchmarks/results/truth.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOOK = REPO / "tests" / "independent_hook"
RESULTS = HERE.parent / "results" / "truth.json"
TOLERANCE = 1e-5  # float32 norms, computed as clip_grad_norm_ computes them
# Loops whose optimizer updates with gradients other than the recorded one, so ``run --clip`` records
# without clipping (and says so): their used-vs-policy figure is the pre-clip error of the --clip run,
# or inf if any step was clipped.
RECORDED_NOT_CLIPPED = {"lbfgs_closure"}


def _run(command: list[str], script: Path, work: Path, name: str) -> tuple[list[dict], "object"]:
    """Run ``gradprobe COMMAND`` on ``script`` under the hook; return what the hook saw and the run."""
    import gradprobe

    seen = work / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(HOOK), "INDEPENDENT_HOOK_OUT": str(seen), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "gradprobe", *command, "-q", "--out", str(work), "--name", name,
                             str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name}: gradprobe {command[0]} exited {result.returncode}: {result.stderr[-2000:]}")
    return json.loads(seen.read_text()), gradprobe.load_run(work / name)


def _relative_error(measured: np.ndarray, truth: np.ndarray) -> float:
    return float(np.max(np.abs(measured - truth) / np.abs(truth))) if len(truth) else float("nan")


def _hook_name(name: str, truth: dict) -> str | None:
    """The hook's name for gradprobe's layer ``name``: the same, or one naming it inside a wrapper."""
    if name in truth:
        return name
    return next((k for k in truth if k.endswith("." + name) or name.endswith("." + k)), None)


def layer_check(seen: list[dict], run, optimizers: list[int]) -> dict:
    """Per-layer rows against the hook's per-parameter norms at the sampled steps: rows compared, names
    found (exactly), layer counts per step equal, and the largest relative error."""
    layers = run.layers
    compared = exact = missing = 0
    counts_match, error = True, 0.0
    for o in optimizers:
        mine = [s for s in seen if s["optimizer"] == o]
        for step, group in layers[layers["optimizer"] == o].groupby("step"):
            truth = mine[int(step)]["layers"]
            counts_match &= len(group) == len(truth)
            for name, norm in zip(group["name"].astype(str), group["norm"].to_numpy(np.float64)):
                match = _hook_name(name, truth)
                if match is None:
                    missing += 1
                    continue
                compared, exact = compared + 1, exact + (match == name)
                error = max(error, abs(norm - truth[match]) / truth[match] if truth[match] else abs(norm))
    return {"layer_rows_compared": compared, "layer_names_exact": exact, "layer_names_missing": missing,
            "layer_counts_match": bool(counts_match), "max_rel_error_layers": error}


def check(script: Path, work: Path) -> dict:
    """Profile and clip one loop under the hook; the figures of the module docstring."""
    seen, run = _run(["profile"], script, work, f"{script.stem}-profile")
    optimizers = sorted({s["optimizer"] for s in seen})
    steps = run.steps
    counts = {str(o): [sum(s["optimizer"] == o for s in seen), int((steps["optimizer"] == o).sum())]
              for o in optimizers}
    # The hook numbers optimizers by their first step, gradprobe by when it first met them: both in step order.
    pre_error = max(_relative_error(steps[steps["optimizer"] == o]["global_norm"].to_numpy(np.float64),
                                    np.array([s["pre"] for s in seen if s["optimizer"] == o])) for o in optimizers)
    layers = layer_check(seen, run, optimizers)
    cap = float(f"{np.median(steps['global_norm']):.3g}")
    seen_clipped, clipped = _run(["run", "--clip", f"global-norm:max={cap}"], script, work, f"{script.stem}-clip")
    used_error = post_error = 0.0
    clipped_share = []
    for o in optimizers:
        mine = [s for s in seen_clipped if s["optimizer"] == o]
        pre, used = np.array([s["pre"] for s in mine]), np.array([s["used"] for s in mine])
        rows = clipped.steps[clipped.steps["optimizer"] == o]
        if script.stem in RECORDED_NOT_CLIPPED:  # the pre-clip record is right and nothing was clipped
            used_error = max(used_error, _relative_error(rows["global_norm"].to_numpy(np.float64), pre),
                             0.0 if rows["clip_threshold"].isna().all() else float("inf"))
        else:
            used_error = max(used_error, _relative_error(used, pre * np.minimum(1.0, cap / (pre + 1e-6))))
            post_error = max(post_error, _relative_error(rows["global_norm_post"].to_numpy(np.float64), used))
        clipped_share.append(float(np.mean(pre > cap)))
    return {"loop": script.stem, "doc": (script.read_text().split('"""')[1]).split("\n")[0],
            "steps_hook_vs_recorded": counts, "steps_match": all(a == b for a, b in counts.values()),
            "max_rel_error_pre_clip": pre_error, "cap": cap, "clipped_share": clipped_share,
            "max_rel_error_used_vs_policy": used_error, "max_rel_error_post_clip": post_error, **layers,
            "ok": all(a == b for a, b in counts.values()) and layers["layer_counts_match"]
            and layers["layer_rows_compared"] > 0 and layers["layer_names_missing"] == 0
            and max(pre_error, used_error, post_error, layers["max_rel_error_layers"]) <= TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="a loop's file name without .py (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    scripts = [p for p in sorted((HERE / "loops").glob("*.py")) if not args.only or p.stem in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="gradprobe-truth-") as tmp:
        for script in scripts:
            row = check(script, Path(tmp))
            results.append(row)
            print(f"{row['loop']:<28} steps {'match' if row['steps_match'] else 'DIFFER'} "
                  f"{row['steps_hook_vs_recorded']}  pre-clip {row['max_rel_error_pre_clip']:.1e}  "
                  f"used vs policy {row['max_rel_error_used_vs_policy']:.1e}  "
                  f"post-clip {row['max_rel_error_post_clip']:.1e}  layers {row['layer_rows_compared']} rows "
                  f"{row['max_rel_error_layers']:.1e}  {'ok' if row['ok'] else 'FAIL'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tolerance": TOLERANCE, "loops": results}, indent=2) + "\n")
    print(f"{sum(r['ok'] for r in results)} of {len(results)} loops within {TOLERANCE:g}; wrote {args.out}")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
