#!/usr/bin/env python3
"""Time every metric component on a large synthetic split, next to cell-eval (not part of the test suite).

    python benchmarks/metrics.py [--n_conditions 2000] [--n_genes 8000] [--n_contexts 1] [--skip_cell_eval]
                                 [--cell_eval_python PYTHON] [--keep DIR] [--baseline TREE] [--random_draws K]
                                 [--skip_separate]

Generates a solution (`--n_conditions` held-out perturbations in `--n_contexts` cell types, each a single
or double knock-down of measured genes, with replicate halves and a control layer) and a prediction (the
truth shrunk towards the context mean plus noise: a decent, not perfect, method), in the API formats.
Every component of src/metrics runs through `perturbcast.runner.run_component`, so its wall time covers
the whole component: Python start, reading and validating the inputs, computing, validating and writing
the score. cell-eval then scores the same profiles with `MetricsEvaluator(..., skip_de=True)` and
`compute(profile="anndata")` (its AnnData metrics: pearson_delta, mse, mae, mse_delta, mae_delta,
discrimination_score_l1/l2/cosine, pearson_edistance, clustering_agreement), one evaluator per context
(cell-eval has no contexts), with file paths as inputs so that it reads its files as our components do;
it runs in `--cell_eval_python` (cell-eval 0.8.2 pins its own dependencies: a venv of its own, e.g.
`python -m venv /tmp/ce && /tmp/ce/bin/pip install cell-eval==0.8.2`), one thread as cell-eval2.
Prints one line per component with wall time and peak memory, and the totals. cell-eval2 (the VCC 2026
scorer) then scores the same profiles with its `anndata` profile (v2 preset, CPU, one thread, each label's
target gene excluded through `target_gene_map`) in its own environment (`perturbcast envs build
cell_eval2`; skipped with a line when it is not built). Both reference scorers are compared, wall and
CPU, with every perturbcast metric id scored in one process (the engine's worker), the ratios printed.

It then times every metric script of src/metrics one after the other in one Python process (how the
local engine's worker scores one prediction: the inputs are read and checked once, later scripts reuse
them), with each component's processed config so that inputs are validated as in a real run. With
`--baseline TREE` (a checkout of an earlier commit, e.g. `git archive <commit> | tar -x -C TREE`) the
same in-process timing runs on that tree's scripts first and both are printed (before / after). With
`--random_draws K` a prediction with K draws is also scored (each draw gives every condition the
observed profile of a random condition of its context, as random_perturbation does with training
profiles; K is capped like random_perturbation's, at 200 MB of float32 draws).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perturbcast.config import discover_components  # noqa: E402
from perturbcast.runner import run_component  # noqa: E402


def synthetic_split(directory: Path, n_conditions: int, n_genes: int, n_contexts: int, seed: int = 0):
    """Write solution.h5ad and prediction.h5ad; returns the cell-eval input paths per context."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i:05d}" for i in range(n_genes)], dtype=object)
    rank = 20
    loadings = rng.normal(0, 0.12, size=(n_genes, rank))
    contexts = [f"cell_{c}" for c in range(n_contexts)]
    per_context = np.array_split(np.arange(n_conditions), n_contexts)
    rows, truth, rep1, rep2, control, guess = [], [], [], [], [], []
    for context, members in zip(contexts, per_context):
        base = rng.gamma(2.0, 0.6, size=n_genes)
        shared = rng.normal(0, 0.15, size=n_genes)  # systematic perturbed-vs-control shift
        n = len(members)
        first = rng.choice(n_genes, size=n, replace=n > n_genes)
        second = np.where(rng.random(n) < 0.1, rng.integers(0, n_genes, size=n), -1)
        effects = (loadings[first] + np.where(second[:, None] >= 0, loadings[np.maximum(second, 0)], 0.0)) \
            @ loadings.T * 4.0 + shared
        effects[np.arange(n), first] -= 1.5
        hit = second >= 0
        effects[np.flatnonzero(hit), second[hit]] -= 1.5
        mean = np.clip(base + effects, 0.0, None)
        halves = [np.clip(mean + rng.normal(0, 0.08, size=mean.shape), 0.0, None) for _ in range(2)]
        observed = (halves[0] + halves[1]) / 2
        centre = observed.mean(axis=0)
        predicted = np.clip(0.5 * observed + 0.5 * centre + rng.normal(0, 0.05, size=mean.shape), 0.0, None)
        for i in range(n):
            targets = sorted({genes[first[i]]} | ({genes[second[i]]} if second[i] >= 0 else set()))
            rows.append({"perturbation": "+".join(targets), "cell_type": context})
        truth.append(observed), rep1.append(halves[0]), rep2.append(halves[1]), guess.append(predicted)
        control.append(np.repeat(base[None, :], n, axis=0))
    obs = pd.DataFrame(rows)
    obs["perturbation_type"] = "knockdown"
    obs["n_targets"] = obs["perturbation"].str.count(r"\+").astype(np.int64) + 1
    obs["condition"] = "none"
    obs["stratum"] = np.where(obs["n_targets"] > 1, "combo_seen0", "single")
    obs["n_cells"] = np.int64(100)
    obs.index = pd.Index([f"{p}|{c}|none|{i}" for i, (p, c) in enumerate(zip(obs.perturbation, obs.cell_type))],
                         dtype=object)
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    uns = {"dataset_id": "synthetic_metrics", "task_id": "unseen_perturbation", "split_seed": seed,
           "normalization_id": "log1p"}
    f32 = lambda blocks: np.vstack(blocks).astype(np.float32)  # noqa: E731
    solution = ad.AnnData(X=f32(truth), obs=obs, var=var, uns=dict(uns),
                          layers={"replicate_1": f32(rep1), "replicate_2": f32(rep2), "control": f32(control)})
    prediction = ad.AnnData(X=f32(guess), obs=pd.DataFrame(index=obs.index.copy()), var=var.copy(),
                            uns={"dataset_id": uns["dataset_id"], "task_id": uns["task_id"], "method_id": "synthetic"})
    solution.write_h5ad(directory / "solution.h5ad")
    prediction.write_h5ad(directory / "prediction.h5ad")

    # cell-eval inputs: per context, one AnnData of pseudobulk "cells" with the control profile as the
    # control group (the same control for the observation and the prediction, as in our deltas)
    paths = []
    for context in contexts:
        rows_ = np.flatnonzero((obs["cell_type"] == context).to_numpy())
        labels = ["non-targeting"] + [f"{p}#{i}" for i, p in zip(rows_, obs["perturbation"].iloc[rows_])]
        cell_obs = pd.DataFrame({"target": labels}, index=[f"c{i}" for i in range(len(labels))])
        for name, matrix in (("real", solution.X), ("pred", prediction.X)):
            X = np.vstack([solution.layers["control"][rows_[0]][None, :], matrix[rows_]]).astype(np.float32)
            path = directory / f"celleval_{name}_{context}.h5ad"
            ad.AnnData(X=X, obs=cell_obs.copy(), var=var.copy()).write_h5ad(path)
        paths.append((directory / f"celleval_real_{context}.h5ad", directory / f"celleval_pred_{context}.h5ad"))
    return paths


CELL_EVAL_TIMER = """
import contextlib, io, json, logging, sys, time, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from importlib.metadata import version
from cell_eval import MetricsEvaluator
jobs, outdir = json.loads(sys.argv[1]), sys.argv[2]
start, start_cpu = time.perf_counter(), time.process_time()
with contextlib.redirect_stderr(io.StringIO()):  # cell-eval's progress bars
    for real, pred in jobs:
        evaluator = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert="non-targeting", pert_col="target",
                                     skip_de=True, outdir=outdir, num_threads=1)
        evaluator.compute(profile="anndata", write_csv=False)
print(json.dumps([time.perf_counter() - start, time.process_time() - start_cpu, version("cell-eval")]))
"""

# one thread for every library the reference scorers use, so that their CPU time is one core's work
SINGLE_THREAD = {key: "1" for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "NUMBA_NUM_THREADS", "POLARS_MAX_THREADS")}


def run_timer(python: str, code: str, *arguments: str) -> tuple[float, float, str] | str:
    """Run a timer script with `python` (one thread); its (wall, CPU, version) or the last error line."""

    output = subprocess.run([python, "-c", code, *arguments], capture_output=True, text=True,
                            env={**os.environ, **SINGLE_THREAD})
    if output.returncode != 0:
        return (output.stderr.strip().splitlines() or ["no output"])[-1]
    wall, cpu, package_version = json.loads(output.stdout.strip().splitlines()[-1])
    return wall, cpu, package_version


def time_cell_eval(paths, outdir: Path, python: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of cell-eval's AnnData metrics on the same profiles (after its import), run by
    `python` (an interpreter with cell-eval installed, e.g. a venv of its own: `--cell_eval_python`)."""
    probe = subprocess.run([python, "-c", "import cell_eval"], capture_output=True)
    if probe.returncode != 0:
        return float("nan"), float("nan"), (f"cell-eval is not installed for {python} (pip install cell-eval==0.8.2 "
                                            "in a venv of its own, then --cell_eval_python VENV/bin/python)")
    outdir.mkdir(parents=True, exist_ok=True)
    timing = run_timer(python, CELL_EVAL_TIMER, json.dumps([[str(real), str(pred)] for real, pred in paths]),
                       str(outdir))
    if isinstance(timing, str):
        return float("nan"), float("nan"), f"cell-eval failed: {timing}"
    wall, cpu, package_version = timing
    return wall, cpu, f"cell-eval {package_version}"


CELL_EVAL2_TIMER = """
import json, logging, sys, time, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from dataclasses import replace
from importlib.metadata import version
from cell_eval2 import EvalConfig, compute_metrics
jobs = json.loads(sys.argv[1])
start, start_cpu = time.perf_counter(), time.process_time()
for real, pred, gene_map in jobs:
    config = replace(EvalConfig.from_preset("v2"), metrics="anndata", pert_col="target", control="non-targeting",
                     input_type="lognorm", num_threads=1, gather_threads=1, device="cpu", target_gene_map=gene_map)
    compute_metrics(pred, real, config=config)
print(json.dumps([time.perf_counter() - start, time.process_time() - start_cpu, version("cell-eval2")]))
"""


def time_cell_eval2(paths) -> tuple[float, float, str]:
    """Wall and CPU seconds of cell-eval2's `anndata` profile (after its import) on the same profiles, one
    thread, CPU, each label's target gene excluded through `target_gene_map`; in cell-eval2's own
    environment (`perturbcast envs build cell_eval2`), as the component runs it."""
    import anndata as ad
    import yaml

    from perturbcast import envs

    raw = yaml.safe_load((ROOT / "src" / "metrics" / "cell_eval2" / "config.vsh.yaml").read_text())
    environment = envs.ready("cell_eval2", raw)
    if environment is None:
        return float("nan"), float("nan"), "cell-eval2's environment is not built (perturbcast envs build cell_eval2)"
    jobs = []
    for real, pred in paths:
        labels = ad.read_h5ad(real, backed="r").obs["target"].astype(str)
        gene_map = {label: label.split("#")[0].split("+")[0] for label in labels if label != "non-targeting"}
        jobs.append((str(real), str(pred), gene_map))
    timing = run_timer(str(environment.python), CELL_EVAL2_TIMER, json.dumps(jobs))
    if isinstance(timing, str):
        return float("nan"), float("nan"), f"cell-eval2 failed: {timing}"
    wall, cpu, ce2_version = timing
    return wall, cpu, f"cell-eval2 {ce2_version}"


MAX_DRAW_BYTES = 200_000_000  # random_perturbation's bound on its draws


def write_random_draws(directory: Path, n_draws: int, seed: int = 1) -> int:
    """random.h5ad: `n_draws` draws (capped at MAX_DRAW_BYTES of float32), each row the observed profile
    of a random condition of the same context; returns the number of draws written."""
    import anndata as ad

    solution = ad.read_h5ad(directory / "solution.h5ad")
    n_draws = max(1, min(n_draws, MAX_DRAW_BYTES // (4 * solution.n_obs * solution.n_vars)))
    rng = np.random.default_rng(seed)
    contexts = solution.obs["cell_type"].astype(str).to_numpy()
    drawn = np.empty((n_draws, solution.n_obs), dtype=np.int64)
    for context in np.unique(contexts):
        members = np.flatnonzero(contexts == context)
        drawn[:, members] = members[rng.integers(len(members), size=(n_draws, len(members)))]
    X = np.asarray(solution.X)
    prediction = ad.AnnData(X=X[drawn[0]], obs=pd.DataFrame(index=solution.obs_names.copy()), var=solution.var.copy(),
                            uns={"dataset_id": solution.uns["dataset_id"], "task_id": solution.uns["task_id"],
                                 "method_id": "random_draws", "n_draws": n_draws},
                            layers={f"draw_{k}": X[drawn[k]] for k in range(1, n_draws)})
    prediction.write_h5ad(directory / "random.h5ad")
    return n_draws


def one_process_worker(tree: Path, directory: Path, prediction: str, cpus: int | None = None) -> int:
    """Run every metric script of `tree` in this process, one after the other, as the engine's session
    process runs them (`meta['cpus']` = `cpus`; the thread variables are set by the caller); print JSON timings."""
    import tempfile as _tempfile

    import yaml

    from perturbcast.config import load_config

    results = []
    utils = tree / "src" / "utils"
    sys.path.insert(0, str(utils))
    # Python metric scripts only (an R script, limma_de, cannot run in this process)
    configs = sorted(path for path in (tree / "src" / "metrics").glob("*/config.vsh.yaml")
                     if (path.parent / "script.py").exists())
    # as in the engine's session, the libraries its fork server preloads are imported before the clock starts
    import importlib

    from perturbcast.engine_run import PRELOADED_MODULES

    for module in PRELOADED_MODULES:
        importlib.import_module(module)
    # the merged configs, as viash writes them beside the scripts: the engine writes them in its own process
    # (runner.build), not in the session process, so before the clock
    scripts = []
    for path in configs:
        config = load_config(path)
        with _tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump(config.raw, handle)
        scripts.append((path, config.name, handle.name))
    start_all, cpu_all = time.perf_counter(), time.process_time()
    for path, name, config_path in scripts:
        source = (path.parent / "script.py").read_text().split("## VIASH END", 1)[1]
        par = {"input_solution": str(directory / "solution.h5ad"), "input_prediction": str(directory / prediction),
               "output": str(directory / f"one_{tree.name}_{name}.h5ad")}
        meta = {"name": name, "resources_dir": str(utils), "config": config_path, "cpus": cpus}
        start, cpu = time.perf_counter(), time.process_time()
        import contextlib
        import io

        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                exec(compile("import sys\n" + source, str(path.parent / "script.py"), "exec"), {"par": par, "meta": meta})
            status = "ok"
        except SystemExit as stop:  # 99: not applicable (e.g. distribution_distance without cells)
            if stop.code != 99:
                sys.stderr.write(captured.getvalue())
                raise
            status = "not applicable"
        results.append((name, time.perf_counter() - start, time.process_time() - cpu, status))
        Path(config_path).unlink()
    print(json.dumps({"components": results, "total": time.perf_counter() - start_all,
                      "cpu": time.process_time() - cpu_all,
                      "peak_mib": _peak_mib()}))
    return 0


def _peak_mib() -> float:
    """This process's peak resident memory. Linux's ru_maxrss keeps the high-water mark of the process that
    forked it (this benchmark, ~1.5 GB after generating the split) across exec; VmHWM is this program's own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_one_process(tree: Path, directory: Path, prediction: str, label: str, cpus: int) -> tuple[float, float]:
    """Print the one-process timings of `tree`'s metric scripts on `prediction`, run as a session process of
    the engine whose steps get `cpus` CPUs each (`meta['cpus']`, and as many threads for the numerical
    libraries, unless set in the environment); returns the total wall and CPU."""
    from perturbcast.spawner import thread_environment

    output = subprocess.run([sys.executable, __file__, "--worker", str(tree), str(directory), prediction, str(cpus)],
                            capture_output=True, text=True, env=thread_environment(cpus))
    if output.returncode != 0:
        print(f"{label}: failed\n{output.stderr[-2000:]}")
        return float("nan"), float("nan")
    timing = json.loads(output.stdout.strip().splitlines()[-1])
    for name, wall, cpu, status in timing["components"]:
        print(f"  {label:<10} {name:<20} {wall:8.1f} {cpu:7.1f}" + ("" if status == "ok" else f"  {status}"), flush=True)
    print(f"  {label:<10} {'all, one process':<20} {timing['total']:8.1f} {timing['cpu']:7.1f}  "
          f"peak {timing['peak_mib']:.0f} MiB", flush=True)
    return timing["total"], timing["cpu"]


def time_separately(directory: Path) -> None:
    """Every metric component in its own process, as `perturbcast run` runs it; one line each."""
    import anndata as ad

    metrics = [c for c in discover_components(ROOT) if c.component_type == "metric"]
    total = total_cpu = 0.0
    print(f"{'component':<20} {'wall s':>8} {'CPU s':>7} {'peak MiB':>9}  metric ids", flush=True)
    for component in metrics:
        output = directory / f"score_{component.name}.h5ad"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(directory / f"{component.name}.log", "w") as log:
            result = run_component(component.directory, [
                "--input_solution", str(directory / "solution.h5ad"),
                "--input_prediction", str(directory / "prediction.h5ad"), "--output", str(output)],
                stdout=log, stderr=log)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if result.exit_code == 99:  # e.g. the cell metrics: the synthetic split has no cells
            print(f"{component.name:<20} not applicable (no cells in the synthetic split)", flush=True)
            continue
        if result.exit_code != 0:
            print(f"{component.name:<20} failed (exit {result.exit_code}); see {directory / component.name}.log")
            continue
        ids = list(ad.read_h5ad(output).uns["metric_ids"])
        total += result.wall_seconds
        total_cpu += cpu
        print(f"{component.name:<20} {result.wall_seconds:8.1f} {cpu:7.1f} {result.peak_rss_bytes / 2**20:9.0f}  "
              f"{', '.join(ids)}", flush=True)
    print(f"{'all our metrics':<20} {total:8.1f} {total_cpu:7.1f}", flush=True)


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        return one_process_worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_conditions", type=int, default=2000)
    parser.add_argument("--n_genes", type=int, default=8000)
    parser.add_argument("--n_contexts", type=int, default=1)
    parser.add_argument("--skip_cell_eval", action="store_true")
    parser.add_argument("--cell_eval_python", default=sys.executable,
                        help="the Python interpreter that has cell-eval (default: this one), e.g. a venv of its own")
    parser.add_argument("--keep", type=Path, help="keep the generated files in this directory")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit to time first (before)")
    parser.add_argument("--random_draws", type=int, default=0, help="also score a prediction with this many draws")
    parser.add_argument("--skip_separate", action="store_true", help="skip the one-process-per-component timing")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="the one-process timing runs as the session of an engine run with this many jobs "
                             "(default: as `perturbcast bench`, one per CPU)")
    args = parser.parse_args()
    from perturbcast.engine_guard import cpu_share
    from perturbcast.spawner import THREAD_VARIABLES

    cpus = cpu_share(args.jobs)

    directory = args.keep or Path(tempfile.mkdtemp(prefix="perturbcast-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        paths = synthetic_split(directory, args.n_conditions, args.n_genes, args.n_contexts)
        print(f"generated {args.n_conditions} conditions x {args.n_genes} genes in {args.n_contexts} context(s) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        threads = ", ".join(f"{name}={os.environ.get(name, cpus)}" for name in THREAD_VARIABLES)
        print(f"every metric script in one process, as the engine's session with --jobs {args.jobs} on "
              f"{cpu_share(1)} CPUs runs them: meta['cpus'] = {cpus}, {threads}", flush=True)
        print(f"({'component':<20} {'wall s':>8} {'CPU s':>7})", flush=True)
        before = time_one_process(args.baseline, directory, "prediction.h5ad", "before", cpus)[0] \
            if args.baseline else None
        after, after_cpu = time_one_process(ROOT, directory, "prediction.h5ad", "after", cpus)
        if before is not None:
            print(f"one process, all metric ids: before {before:.1f} s, after {after:.1f} s "
                  f"({before / after:.1f}x)", flush=True)
        if args.random_draws:
            start = time.perf_counter()
            n_draws = write_random_draws(directory, args.random_draws)
            print(f"random draws: {n_draws} draws written in {time.perf_counter() - start:.1f} s "
                  f"(requested {args.random_draws}, cap {MAX_DRAW_BYTES / 1e6:.0f} MB of float32)", flush=True)
            time_one_process(ROOT, directory, "random.h5ad", f"{n_draws} draws", cpus)
        if not args.skip_separate:
            time_separately(directory)
        if args.skip_cell_eval:
            return 0
        # the reference scorers on the same profiles, against every perturbcast metric id scored as the
        # engine's worker scores one prediction (one process, the `after` line above)
        print(f"{'scorer':<34} {'wall s':>8} {'CPU s':>7}  perturbcast (one process) is faster by", flush=True)
        print(f"{'perturbcast, every metric id':<34} {after:8.1f} {after_cpu:7.1f}", flush=True)
        for timer in (lambda: time_cell_eval(paths, directory / "cell-eval-out", args.cell_eval_python), lambda: time_cell_eval2(paths)):
            seconds, cpu, label = timer()
            if not np.isfinite(seconds):
                print(label, flush=True)
                continue
            print(f"{label + ', profile anndata':<34} {seconds:8.1f} {cpu:7.1f}  "
                  f"{seconds / after:.1f}x wall, {cpu / after_cpu:.1f}x CPU", flush=True)
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
