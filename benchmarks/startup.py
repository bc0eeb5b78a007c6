"""Start-up cost of `gradprobe profile`: wall time and peak memory it adds to a script before training.

For each script (one that does nothing, one that only imports torch) it runs
``python s.py`` and ``gradprobe profile s.py`` in interleaved rounds (the order
alternates from round to round so that drift on the machine affects both
alike), measures each process's wall time, CPU time (user + system, which
other load on the machine disturbs less) and peak resident memory (the
child's own ``ru_maxrss``, from ``os.wait4``), and reports medians, the
spread (min-max) and the median of the per-round differences. Writes
``benchmarks/results/startup.json``.

    python benchmarks/startup.py [--rounds 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = {"empty": "", "import torch": "import torch\n"}
RESULTS = Path(__file__).resolve().parent / "results" / "startup.json"


def gradprobe_command() -> list[str]:
    """The installed ``gradprobe`` console script beside this Python, else ``python -m gradprobe``."""
    script = Path(sys.executable).with_name("gradprobe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradprobe"]


UNITS = ("s", "cpu s", "MiB")


def measure(command: list[str], cwd: Path) -> tuple[float, float, float]:
    """Run ``command`` once; its wall time and CPU time in seconds and its peak resident memory in MiB."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command)} exited {process.returncode}:\n{stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports KiB


def summary(values: list[float]) -> dict[str, float | list[float]]:
    """Median, min and max of ``values``, with the values themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 4) for v in values]}


def bench(rounds: int) -> dict:
    """Every script under both launchers, ``rounds`` interleaved rounds; the figures per script."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        commands = {}
        for label, source in SCRIPTS.items():
            script = cwd / f"{label.replace(' ', '_')}.py"
            script.write_text(source)
            commands[label] = {"python": [sys.executable, script.name],
                               "gradprobe profile": [*gradprobe_command(), "profile", "--quiet", "--out",
                                                     str(cwd / "runs"), script.name]}
        for command in (c for pair in commands.values() for c in pair.values()):
            measure(command, cwd)  # warm the file cache and the bytecode caches
        samples = {label: {variant: [] for variant in pair} for label, pair in commands.items()}
        for r in range(rounds):
            for label, pair in commands.items():
                variants = list(pair) if r % 2 == 0 else list(reversed(pair))
                for variant in variants:
                    samples[label][variant].append(measure(pair[variant], cwd))
            shutil.rmtree(cwd / "runs", ignore_errors=True)
        for label, by_variant in samples.items():
            plain, profiled = by_variant["python"], by_variant["gradprobe profile"]
            results[label] = {
                **{f"{variant} {unit}": summary([s[i] for s in runs])
                   for variant, runs in by_variant.items() for i, unit in enumerate(UNITS)},
                **{f"added {unit}": statistics.median(p[i] - q[i] for p, q in zip(profiled, plain))
                   for i, unit in enumerate(UNITS)},
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=RESULTS, help="Where to write the figures.")
    args = parser.parse_args()
    figures = {"rounds": args.rounds, "python": platform.python_version(), "cpus": os.cpu_count(),
               "scripts": bench(args.rounds)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    for label, row in figures["scripts"].items():
        plain, profiled = row["python s"], row["gradprobe profile s"]
        print(f"{label:>13}: python {plain['median']:.3f} s [{plain['min']:.3f}-{plain['max']:.3f}], "
              f"gradprobe profile {profiled['median']:.3f} s [{profiled['min']:.3f}-{profiled['max']:.3f}]; "
              f"added {row['added s']:+.3f} s wall, {row['added cpu s']:+.3f} s CPU, "
              f"{row['added MiB']:+.1f} MiB peak memory")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
