#!/usr/bin/env python3
"""Time the default local benchmark end to end (not part of the test suite).

    python benchmarks/engine.py [--jobs 2] [--keep DIR] [-- extra `perturbcast benchmark` options]

Runs `python -m perturbcast benchmark --output <new temp folder> --jobs N` (nothing cached), then prints
the wall time, the CPU time of the whole process tree (the engine, its fork servers and every step:
user + system of the waited-for children), the load average before and after (the machine may be shared:
read the figures with it), the steps per stage and status from trace.tsv, and per stage the sum and the
largest of the step walls. Wall minus (sum of step walls / jobs) is roughly what the engine process
itself costs: planning, validating outputs, sealing, aggregating and the report.
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_totals(trace: Path) -> dict:
    """stage -> {steps, status counts, sum and max of step walls} from a trace.tsv."""
    stages: dict = defaultdict(lambda: {"steps": 0, "status": defaultdict(int), "wall": 0.0, "max": 0.0})
    with open(trace, newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            stage = stages[row["stage"]]
            stage["steps"] += 1
            stage["status"][row["status"]] += 1
            wall = float(row["wall_seconds"] or 0.0)
            stage["wall"] += wall
            stage["max"] = max(stage["max"], wall)
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="write the results here (must not exist) and keep them")
    parser.add_argument("extra", nargs="*", help="more `perturbcast benchmark` options (after --)")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists; the benchmark must start from nothing cached")
    output = args.keep or Path(tempfile.mkdtemp(prefix="perturbcast-engine-")) / "results"
    command = [sys.executable, "-m", "perturbcast", "benchmark", "--output", str(output), "--jobs", str(args.jobs),
               *args.extra]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with open(output.parent / f"{output.name}.log", "w") as log:
            completed = subprocess.run(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        print(f"$ {' '.join(command[1:])}")
        print(f"exit code {completed.returncode}; wall {wall:.1f} s; CPU {user + system:.1f} s "
              f"(user {user:.1f}, system {system:.1f}) on {os.cpu_count()} cores; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
        trace = output / "trace.tsv"
        if not trace.exists():
            print(f"no trace.tsv; see {output.parent / output.name}.log")
            return 1
        stages = stage_totals(trace)
        total = sum(s["wall"] for s in stages.values())
        print(f"{'stage':<10} {'steps':>6} {'sum wall s':>11} {'max s':>7}  status")
        for name, stage in stages.items():
            status = ", ".join(f"{k} {v}" for k, v in sorted(stage["status"].items()))
            print(f"{name:<10} {stage['steps']:>6} {stage['wall']:>11.1f} {stage['max']:>7.1f}  {status}")
        print(f"{'all':<10} {sum(s['steps'] for s in stages.values()):>6} {total:>11.1f}")
        print(f"engine process beyond the steps: ~{wall - total / args.jobs:.1f} s "
              f"(wall - sum of step walls / {args.jobs} jobs)")
        return completed.returncode
    finally:
        if args.keep is None:
            shutil.rmtree(output.parent, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
