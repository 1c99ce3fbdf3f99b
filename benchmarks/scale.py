#!/usr/bin/env python3
"""A genome-scale screen end to end on this machine (not part of the test suite).

    python benchmarks/scale.py                          # Replogle-sized: 8,000 genes, 2,000 perturbations, ~300k cells
    python benchmarks/scale.py --profiles-only          # the same screen as pseudobulk profiles (no cell-level paths)
    python benchmarks/scale.py --n-genes 2000 --n-perturbations 500 --cells-per-perturbation 60   # smaller
    python benchmarks/scale.py --keep DIR               # keep the results (DIR must not exist)

Two phases, as a lab would meet them:

1. The screen. The simulator (`simulated_grn`, run as a component: its size set by the arguments here, the
   default dataset untouched) writes a cell-level file (`screen_cells.h5ad`: sparse counts and log-normalised
   values of every cell it keeps: at most 500 per perturbation and 2,000 controls per cell type) and its
   pseudobulk profiles (`screen.h5ad`). Generated once per size into `--screens` (reused after), and timed on
   its own: it stands for the lab's file, not for benchmark work.
2. The benchmark on that file, as `perturbcast benchmark --dataset-file` takes a lab's screen: the cell-level
   file through the h5ad_file loader (pseudobulked again, cells kept for the cell-level methods and metrics),
   or with `--profiles-only` the profiles (cell-level metrics then not applicable). Baselines, controls,
   `linear_baseline` and every metric, `unseen_perturbation` with 5 folds, `--jobs 2`, nothing cached.

Printed:

- the screen's generation: wall, CPU, peak memory, file sizes;
- the run: wall time and CPU time (user + system of the whole process tree), the load average before and
  after (the machine may be shared: read the figures with it);
- per stage: steps, the sum and the largest of the step walls, the largest peak memory; per step kind
  (component): steps, sum of walls, largest peak memory;
- the engine's own time per step: (wall - sum of step walls / jobs) / steps;
- the input's size (the file given to `--dataset-file`), the results folder's size and its largest parts;
- report.html's size and the time to render it again (`perturbcast report`).

Per-stage CPU time is not recorded by the engine (its step records hold wall time and peak memory), so only the
run's total CPU time is printed.
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import stage_totals  # noqa: E402  (benchmarks/engine.py)

METHODS = ["train_mean", "train_median", "no_change", "random_perturbation", "ground_truth", "replicate_ceiling",
           "oracle", "linear_baseline"]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB" if size >= 2**20 else f"{size / 2**10:,.0f} KiB"


def step_kinds(trace: Path) -> dict:
    """component -> {steps, wall, peak MiB} from a trace.tsv."""
    kinds: dict = defaultdict(lambda: {"stage": "", "steps": 0, "wall": 0.0, "peak": 0.0})
    with open(trace, newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            kind = kinds[row["component"]]
            kind["stage"] = row["stage"]
            kind["steps"] += 1
            kind["wall"] += float(row["wall_seconds"] or 0.0)
            kind["peak"] = max(kind["peak"], float(row["peak_rss_mib"] or 0.0))
    return kinds


def timed(command: list[str], log: Path, environment: dict) -> tuple[int, float, float]:
    """Exit code, wall and CPU seconds (user + system of the process tree) of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return code, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def generate_screen(simulation: dict, screens: Path, environment: dict) -> tuple[Path, Path]:
    """The simulator's screen for these arguments (made once per size into `screens`; printed: its cost)."""
    key = "_".join(f"{k}{v}" for k, v in simulation.items() if k != "dataset_id")
    folder = screens / key
    profiles, cells = folder / "screen.h5ad", folder / "screen_cells.h5ad"
    if profiles.exists() and cells.exists():
        print(f"screen: reused {folder} (profiles {mib(profiles.stat().st_size)}, cells {mib(cells.stat().st_size)})")
        return profiles, cells
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "perturbcast", "run", "src/datasets/simulated_grn", "--",
               "--output", str(profiles), "--output_cells", str(cells),
               *[item for k, v in simulation.items() for item in (f"--{k}", str(v))]]
    code, wall, cpu = timed(command, folder / "simulate.log", environment)
    if code != 0:
        raise SystemExit(f"the simulator failed (exit {code}); see {folder / 'simulate.log'}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10  # KiB on Linux; the largest child so far
    print(f"screen: simulated in {wall:.0f} s wall, {cpu:.0f} s CPU, peak {peak:,.0f} MiB; profiles "
          f"{mib(profiles.stat().st_size)}, cells {mib(cells.stat().st_size)} ({folder})")
    return profiles, cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-genes", type=int, default=8000)
    parser.add_argument("--n-perturbations", type=int, default=2000, help="single-gene perturbations")
    parser.add_argument("--cells-per-perturbation", type=int, default=150, help="mean cells per perturbation")
    parser.add_argument("--n-control-cells", type=int, default=10000, help="control cells per cell type")
    parser.add_argument("--n-cell-types", type=int, default=1)
    parser.add_argument("--n-regulators", type=int, help="default: n_genes / 8")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--metrics", nargs="+", help="default: every metric component")
    parser.add_argument("--profiles-only", action="store_true",
                        help="benchmark the screen's profiles, not its cells (no cell-level paths)")
    parser.add_argument("--screens", type=Path, default=Path(tempfile.gettempdir()) / "perturbcast-scale-screens",
                        help="where generated screens are kept and reused (default: %(default)s)")
    parser.add_argument("--keep", type=Path, help="write the results here (must not exist) and keep them")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists; the run must start from nothing cached")
    sys.path.insert(0, str(ROOT))
    from perturbcast.config import discover_components

    metrics = args.metrics or sorted(c.name for c in discover_components(ROOT, errors=[]) if c.component_type == "metric")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    simulation = {"dataset_id": "simulated_screen", "n_genes": args.n_genes,
                  "n_regulators": args.n_regulators or max(1, args.n_genes // 8),
                  "n_perturbed_genes": args.n_perturbations, "n_combos": 0, "n_cell_types": args.n_cell_types,
                  "cells_per_perturbation": args.cells_per_perturbation, "n_control_cells": args.n_control_cells}
    profiles, cells = generate_screen(simulation, args.screens, environment)
    screen = profiles if args.profiles_only else cells
    work = args.keep.parent if args.keep else Path(tempfile.mkdtemp(prefix="perturbcast-scale-"))
    output = args.keep or work / "results"
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "perturbcast", "benchmark", "--dataset-file", str(screen),
               "--dataset-id", "simulated_screen", "--tasks", "unseen_perturbation", "--methods", *args.methods,
               "--metrics", *metrics, "--n-folds", str(args.n_folds), "--output", str(output), "--jobs", str(args.jobs)]
    try:
        load_before = os.getloadavg()
        code, wall, cpu = timed(command, work / f"{output.name}.log", environment)
        load_after = os.getloadavg()
        print(f"$ perturbcast benchmark --dataset-file {screen.name} --jobs {args.jobs}  ({len(args.methods)} methods "
              f"and controls, {len(metrics)} metric components, {args.n_folds} folds)")
        print(f"exit code {code}; wall {wall:.1f} s; CPU {cpu:.1f} s on {os.cpu_count()} cores; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min; the machine may be shared)")
        trace = output / "trace.tsv"
        if not trace.exists():
            print(f"no trace.tsv; see {work / output.name}.log")
            return 1
        with open(trace, newline="") as handle:
            failed = [row for row in csv.DictReader(handle, delimiter="\t") if row["status"] == "failed"]
        for row in failed[:3]:
            print(f"failed: {row['step']}: {row['reason']}")
        stages, kinds = stage_totals(trace), step_kinds(trace)
        total = sum(s["wall"] for s in stages.values())
        steps = sum(s["steps"] for s in stages.values())
        print(f"\n{'stage':<10} {'steps':>6} {'sum wall s':>11} {'max s':>8} {'max peak':>10}  status")
        for name, stage in stages.items():
            peak = max((k["peak"] for k in kinds.values() if k["stage"] == name), default=0.0)
            status = ", ".join(f"{k} {v}" for k, v in sorted(stage["status"].items()))
            print(f"{name:<10} {stage['steps']:>6} {stage['wall']:>11.1f} {stage['max']:>8.1f} {peak:>7.0f} MiB  {status}")
        print(f"\n{'step kind':<24} {'stage':<8} {'steps':>6} {'sum wall s':>11} {'peak MiB':>9}")
        for name, kind in sorted(kinds.items(), key=lambda item: -item[1]["peak"]):
            print(f"{name:<24} {kind['stage']:<8} {kind['steps']:>6} {kind['wall']:>11.1f} {kind['peak']:>9.0f}")
        print(f"\nsteps {steps}; engine time beyond the steps: {wall - total / args.jobs:.1f} s "
              f"= {(wall - total / args.jobs) / max(1, steps) * 1000:.0f} ms per step (wall - sum of step walls / {args.jobs} jobs)")
        # the input is the file given to --dataset-file; the loader's copy of it (results/datasets, stored
        # compressed where that pays) is part of the results
        inputs = screen.stat().st_size
        results = folder_size(output)
        print(f"input ({screen.name}, as given) {mib(inputs)}; results folder {mib(results)} "
              f"({results / max(1, inputs):.2f} x the input)")
        parts = defaultdict(int)
        for path in output.rglob("*.h5ad"):
            relative = path.relative_to(output).parts
            key = relative[0] if relative[0] in ("datasets", "tasks") else \
                f"{relative[0]}/{relative[-2] if relative[0] == 'predictions' else relative[-2]}"
            parts[key] += path.stat().st_size
        for key, size in sorted(parts.items(), key=lambda item: -item[1])[:8]:
            print(f"  {key:<40} {mib(size)}")
        report = output / "report.html"
        code_report, render, _ = timed([sys.executable, "-m", "perturbcast", "report", str(output)],
                                       work / "report.log", environment)
        print(f"report.html {mib(report.stat().st_size) if report.exists() else 'missing'}; rendering it again "
              f"(perturbcast report) took {render:.1f} s (exit code {code_report})")
        return code
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
