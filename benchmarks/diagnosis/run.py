"""The pathology benchmark: labelled training scripts run under ``gradprobe profile``, scored.

Each script in ``scripts/`` is either a healthy control or has a known
pathology; ``labels.json`` names, per script, the findings it must draw (kind,
minimum severity, layers that must be named, range of the first step, and
evidence values it must hold, e.g. ``first_loss_nonfinite_step`` null for NaN
born in the backward pass). The
benchmark profiles every script with default options, diagnoses the run as
``gradprobe report`` does, and scores:

* per kind: recall (labelled findings found at their minimum severity) and
  precision (of the warning/critical findings of that kind, the share that
  was labelled);
* localisation: the labelled layers named, the first step inside the label's range,
  the labelled evidence values;
* false alarms: warning or critical findings on healthy controls.

It prints a confusion table (labelled kind x kinds alarmed) and writes
``benchmarks/results/diagnosis.json``. Run from the repository root::

    python -m benchmarks.diagnosis            # or: python benchmarks/diagnosis/run.py
    python -m benchmarks.diagnosis --only nan_batch --only healthy_gan
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
LABELS = HERE / "labels.json"
RESULTS = HERE.parent / "results" / "diagnosis.json"
SEVERITIES = ("info", "warning", "critical")
ALARM = "warning"
SCRIPT_TIMEOUT_S = 300


def load_labels(path: Path = LABELS) -> list[dict]:
    """The labelled cases, in file order."""
    return json.loads(path.read_text())["cases"]


def profile(script: Path, out: Path, name: str) -> tuple[Path, float, int, str]:
    """Run ``script`` under ``gradprobe profile`` (default options): the run directory, seconds, exit code
    and the tail of its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gradprobe", "profile", "--out", str(out), "--name", name,
                           "--quiet", str(script)], check=False, capture_output=True, text=True, env=env,
                          timeout=SCRIPT_TIMEOUT_S, cwd=out)
    return out / name, time.perf_counter() - start, done.returncode, done.stderr[-2000:]


def findings_of(run_dir: Path) -> list[dict]:
    """The run's findings as ``gradprobe report --format json`` lists them."""
    import gradprobe
    from gradprobe.analysis import diagnose, split_streams

    run = gradprobe.load_run(run_dir)
    return [f.to_dict() for f in diagnose(split_streams(run), meta=run.meta)]


def at_least(severity: str, minimum: str) -> bool:
    """Whether ``severity`` is ``minimum`` or more urgent."""
    return SEVERITIES.index(severity) >= SEVERITIES.index(minimum)


def judge(case: dict, findings: list[dict]) -> dict:
    """Match one case's labels against its findings: per expected finding, found / layers / first step."""
    expected = []
    for label in case.get("expect", []):
        hits = [f for f in findings if f["kind"] == label["kind"] and at_least(f["severity"], label["min_severity"])]
        best = hits[0] if hits else None
        window = label.get("first_step")
        expected.append({
            "kind": label["kind"],
            "min_severity": label["min_severity"],
            "layers": label.get("layers", []),
            "first_step_range": window,
            "found": best is not None,
            "severity": best["severity"] if best else None,
            "layers_ok": bool(best) and set(label.get("layers", [])) <= set(best["layers"]),
            "first_step": best["steps"][0] if best else None,
            "step_ok": bool(best) and (window is None or window[0] <= best["steps"][0] <= window[1]),
            "evidence": label.get("evidence", {}),
            "evidence_ok": bool(best) and all(best.get("evidence", {}).get(key) == value
                                              for key, value in label.get("evidence", {}).items()),
        })
    alarms = [f for f in findings if at_least(f["severity"], ALARM)]
    labelled = {label["kind"] for label in case.get("expect", [])}
    return {
        "script": case["script"],
        "healthy": not case.get("expect"),
        "expected": expected,
        "alarms": [f["kind"] for f in alarms],
        "unlabelled_alarms": [f["kind"] for f in alarms if f["kind"] not in labelled],
        "findings": [{k: f[k] for k in ("kind", "severity", "layers", "steps")} | {"layers": f["layers"][:6]}
                     for f in findings],
    }


def score(results: list[dict]) -> dict:
    """Recall, precision per kind, localisation and false alarms over judged cases."""
    kinds = sorted({e["kind"] for r in results for e in r["expected"]} | {k for r in results for k in r["alarms"]})
    per_kind = {}
    for kind in kinds:
        labels = [e for r in results for e in r["expected"] if e["kind"] == kind]
        alarms = [(r, k) for r in results for k in r["alarms"] if k == kind]
        true = sum(1 for r, k in alarms if k not in r["unlabelled_alarms"])
        per_kind[kind] = {
            "labelled": len(labels),
            "found": sum(e["found"] for e in labels),
            "recall": sum(e["found"] for e in labels) / len(labels) if labels else None,
            "alarms": len(alarms),
            "precision": true / len(alarms) if alarms else None,
        }
    labels = [e for r in results for e in r["expected"]]
    found = [e for e in labels if e["found"]]
    layered = [e for e in found if e.get("layers")]
    stepped = [e for e in found if e["first_step_range"] is not None]
    evidenced = [e for e in found if e["evidence"]]
    healthy = [r for r in results if r["healthy"]]
    return {
        "cases": len(results),
        "healthy_controls": len(healthy),
        "labelled_findings": len(labels),
        "recall": len(found) / len(labels) if labels else None,
        "layer_accuracy": sum(e["layers_ok"] for e in layered) / len(layered) if layered else None,
        "first_step_accuracy": sum(e["step_ok"] for e in stepped) / len(stepped) if stepped else None,
        "evidence_accuracy": sum(e["evidence_ok"] for e in evidenced) / len(evidenced) if evidenced else None,
        "healthy_with_false_alarm": sum(bool(r["alarms"]) for r in healthy),
        "unlabelled_alarms_on_pathologies": sum(len(r["unlabelled_alarms"]) for r in results if not r["healthy"]),
        "per_kind": per_kind,
    }


def confusion(results: list[dict]) -> tuple[list[str], list[str], list[list[int]]]:
    """Rows: each case's labelled kinds ('healthy' for controls); columns: the kinds alarmed ('none')."""
    rows = sorted({e["kind"] for r in results for e in r["expected"]}) + ["healthy"]
    cols = sorted({k for r in results for k in r["alarms"]}) + ["none"]
    table = [[0] * len(cols) for _ in rows]
    for r in results:
        labelled = [e["kind"] for e in r["expected"]] or ["healthy"]
        alarmed = sorted(set(r["alarms"])) or ["none"]
        for row in labelled:
            for col in alarmed:
                table[rows.index(row)][cols.index(col)] += 1
    return rows, cols, table


def print_report(results: list[dict], summary: dict) -> None:
    """The per-case lines, the per-kind table and the confusion table, on stdout."""
    for r in results:
        status = "ok" if r.get("exit_code", 0) == 0 else f"SCRIPT FAILED ({r['exit_code']})"
        if r["healthy"] and r["alarms"]:
            status = "FALSE ALARM " + ",".join(r["alarms"])
        for e in r["expected"]:
            if not e["found"]:
                status = f"MISSED {e['kind']}>={e['min_severity']}"
            elif not (e["layers_ok"] and e["step_ok"]):
                status = f"found {e['kind']}, mislocated (first step {e['first_step']})"
            elif not e["evidence_ok"]:
                status = f"found {e['kind']}, wrong evidence (expected {e['evidence']})"
        print(f"{r['script']:44s} {status}")
        if status != "ok":
            for f in r["findings"]:
                print(f"{'':46s}{f['kind']} {f['severity']} {f['layers'][:3]} steps {f['steps']}")
    print()
    print(f"{'kind':18s} {'labelled':>8s} {'found':>6s} {'recall':>7s} {'alarms':>7s} {'precision':>9s}")
    for kind, k in summary["per_kind"].items():
        recall = "-" if k["recall"] is None else f"{k['recall']:.0%}"
        precision = "-" if k["precision"] is None else f"{k['precision']:.0%}"
        print(f"{kind:18s} {k['labelled']:8d} {k['found']:6d} {recall:>7s} {k['alarms']:7d} {precision:>9s}")
    rows, cols, table = confusion(results)
    print("\nconfusion (rows: labelled, columns: warning/critical findings)")
    width = max(len(c) for c in cols) + 1
    print(" " * 18 + "".join(f"{c[:width - 1]:>{width}s}" for c in cols))
    for row, counts in zip(rows, table):
        print(f"{row:18s}" + "".join(f"{n:>{width}d}" for n in counts))
    share = lambda value: "-" if value is None else f"{value:.0%}"
    print(f"\nrecall {share(summary['recall'])}  layers {share(summary['layer_accuracy'])}  first step "
          f"{share(summary['first_step_accuracy'])}  evidence {share(summary['evidence_accuracy'])}  false alarms on healthy controls "
          f"{summary['healthy_with_false_alarm']}/{summary['healthy_controls']}")


def run_cases(cases: list[dict], workdir: Path, progress=print) -> list[dict]:
    """Profile and judge each case (in ``workdir``)."""
    results = []
    for case in cases:
        name = Path(case["script"]).stem
        run_dir, seconds, code, stderr = profile(SCRIPTS / case["script"], workdir, name)
        findings = findings_of(run_dir) if (run_dir / "run.json").exists() else []  # no run: nothing found
        result = judge(case, findings)
        result["framework"] = case.get("framework", "torch")
        result["seconds"] = round(seconds, 2)
        result["exit_code"] = code
        if code != 0:
            result["error"] = stderr
        results.append(result)
        progress(f"  {case['script']} ({seconds:.1f} s)", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 (the score is the output, not a pass/fail)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="Run only this script stem (repeatable).")
    parser.add_argument("--out", type=Path, help="Where to write the JSON results (default "
                        f"{RESULTS.relative_to(HERE.parents[1])}; with --only, nowhere unless given).")
    args = parser.parse_args(argv)
    cases = load_labels()
    if args.only:
        unknown = set(args.only) - {Path(c["script"]).stem for c in cases}
        if unknown:
            print(f"error: unknown script {min(unknown)!r}", file=sys.stderr)
            return 2
        cases = [c for c in cases if Path(c["script"]).stem in args.only]
    with tempfile.TemporaryDirectory(prefix="gradprobe-diagnosis-") as tmp:
        results = run_cases(cases, Path(tmp))
    summary = score(results)
    print_report(results, summary)
    out = args.out or (None if args.only else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": "python -m benchmarks.diagnosis", "summary": summary,
                                   "cases": results}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
