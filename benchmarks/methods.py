#!/usr/bin/env python3
"""Time every method and control on a large synthetic training set (not part of the test suite).

    python benchmarks/methods.py [--n_perturbations 2000] [--n_genes 8000] [--n_test 200] [--keep DIR]

Generates one context (cell_type x condition) with `--n_perturbations` single-gene training
perturbations (two replicate profiles each), 20 control profiles and `--n_test` held-out single
perturbations of other genes, with a low-rank effect model (so the learned methods have something to
find), writes train/test/solution files in the API formats, runs every component of src/methods and
src/control_methods through `perturbcast.runner.run_component` (so the output is validated like any run)
and prints wall time and peak memory (maximum resident set size of the component's process) per
component, plus the Pearson delta of each prediction as a sanity check. Wall time covers the whole
component: Python start, reading the inputs, fitting, predicting, validating and writing the output.
"""
from __future__ import annotations

import argparse
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


def synthetic_split(directory: Path, n_perturbations: int, n_genes: int, n_test: int, seed: int = 0):
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = [f"G{i:05d}" for i in range(n_genes)]
    rank = 20
    loadings = rng.normal(0, 0.15, size=(n_genes, rank)).astype(np.float32)
    # perturbing gene t changes gene g by 3 <loadings[t], loadings[g]>: genes that respond alike to the
    # training perturbations also act alike when perturbed (what gene-embedding methods assume)
    gene_factors = 3.0 * loadings
    base = rng.gamma(2.0, 0.6, size=n_genes).astype(np.float32)
    targets = rng.choice(n_genes, size=n_perturbations + n_test, replace=False)
    train_targets, test_targets = targets[:n_perturbations], targets[n_perturbations:]

    def effects(target_rows):
        out = gene_factors[target_rows] @ loadings.T            # perturbations x genes
        out[np.arange(len(target_rows)), target_rows] -= 1.5   # the knocked-down target itself
        return out

    n_controls = 20
    train_effects = effects(train_targets)
    X = np.vstack([
        base + rng.normal(0, 0.05, size=(n_controls, n_genes)).astype(np.float32),
        np.repeat(base + train_effects, 2, axis=0) + rng.normal(0, 0.1, size=(2 * n_perturbations, n_genes)).astype(np.float32),
    ]).astype(np.float32)
    perturbations = ["control"] * n_controls + [genes[t] for t in np.repeat(train_targets, 2)]
    replicates = [f"c{i}" for i in range(n_controls)] + ["r1", "r2"] * n_perturbations
    obs = pd.DataFrame({
        "perturbation": perturbations,
        "is_control": [p == "control" for p in perturbations],
        "perturbation_type": "knockdown",
        "n_targets": np.array([0 if p == "control" else 1 for p in perturbations], dtype=np.int64),
        "cell_type": "K562", "condition": "none", "replicate": replicates,
        "n_cells": np.full(len(perturbations), 100, dtype=np.int64),
    }, index=pd.Index([f"{p}|{r}" for p, r in zip(perturbations, replicates)], dtype=object))
    var = pd.DataFrame({"highly_variable_rank": np.arange(n_genes, dtype=np.int64),
                        "mean_expression": X.mean(axis=0).astype(np.float64)}, index=pd.Index(genes, dtype=object))
    uns = {"dataset_id": "synthetic_benchmark", "task_id": "unseen_perturbation", "split_seed": seed,
           "normalization_id": "log1p"}
    train = ad.AnnData(X=X, obs=obs, var=var, uns=dict(uns))

    test_names = [genes[t] for t in test_targets]
    test_obs = pd.DataFrame({
        "perturbation": test_names, "perturbation_type": "knockdown",
        "n_targets": np.ones(n_test, dtype=np.int64), "cell_type": "K562", "condition": "none",
        "stratum": "single",
    }, index=pd.Index([f"{p}|K562|none" for p in test_names], dtype=object))
    truth = base + effects(test_targets)
    replicate_1 = truth + rng.normal(0, 0.1, size=truth.shape).astype(np.float32)
    replicate_2 = truth + rng.normal(0, 0.1, size=truth.shape).astype(np.float32)
    observed = (replicate_1 + replicate_2) / 2
    test_obs["target_expression"] = [f"{observed[i, t]:.6g}" for i, t in enumerate(test_targets)]
    test = ad.AnnData(X=sp.csr_matrix((n_test, n_genes), dtype=np.float32), obs=test_obs,
                      var=var[["highly_variable_rank"]].copy(), uns=dict(uns))
    control = np.repeat(X[:n_controls].mean(axis=0, keepdims=True), n_test, axis=0)
    solution_obs = test_obs.drop(columns=["target_expression"]).copy()
    solution_obs["n_cells"] = np.full(n_test, 200, dtype=np.int64)
    solution = ad.AnnData(X=observed.astype(np.float32), obs=solution_obs, var=var[["highly_variable_rank"]].copy(),
                          layers={"replicate_1": replicate_1.astype(np.float32),
                                  "replicate_2": replicate_2.astype(np.float32), "control": control.astype(np.float32)},
                          uns=dict(uns))
    directory.mkdir(parents=True, exist_ok=True)
    for name, adata in (("train", train), ("test", test), ("solution", solution)):
        adata.write_h5ad(directory / f"{name}.h5ad")
    return test_targets


def pearson_delta(solution, X, target_columns) -> float:
    observed = np.asarray(solution.X, dtype=np.float64) - solution.layers["control"]
    predicted = np.asarray(X, dtype=np.float64) - solution.layers["control"]
    values = []
    for i, t in enumerate(target_columns):
        keep = np.ones(observed.shape[1], dtype=bool)
        keep[t] = False
        o, p = observed[i, keep], predicted[i, keep]
        values.append(0.0 if o.std() == 0 or p.std() == 0 else float(np.corrcoef(o, p)[0, 1]))
    return float(np.mean(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_perturbations", type=int, default=2000)
    parser.add_argument("--n_genes", type=int, default=8000)
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--components", nargs="*", help="component names (default: every method and control)")
    parser.add_argument("--keep", help="directory for the generated files and predictions (default: a temporary one)")
    parser.add_argument("--generate_only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:  # the child process that writes the data (see below)
        np.save(Path(args.generate_only) / "test_targets.npy",
                synthetic_split(Path(args.generate_only), args.n_perturbations, args.n_genes, args.n_test))
        return 0

    directory = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="perturbcast-bench-"))
    started = time.perf_counter()
    # Generated in a child process: on Linux a child's peak RSS (what the runner reports) starts from its
    # parent's peak at fork, so this process stays small while the components run.
    subprocess.run([sys.executable, __file__, "--generate_only", str(directory),
                    "--n_perturbations", str(args.n_perturbations), "--n_genes", str(args.n_genes),
                    "--n_test", str(args.n_test)], check=True)
    test_targets = np.load(directory / "test_targets.npy")
    print(f"synthetic split: {args.n_perturbations} training perturbations x 2 replicates + 20 controls, "
          f"{args.n_genes} genes, {args.n_test} test conditions ({time.perf_counter() - started:.1f} s to write) "
          f"in {directory}", file=sys.stderr)
    components = [c for c in discover_components(ROOT) if c.component_type in ("method", "control_method")]
    if args.components:
        components = [c for c in components if c.name in args.components]
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for component in sorted(components, key=lambda c: (c.component_type, c.name)):
        output = directory / f"{component.name}.h5ad"
        argv = ["--input_train", directory / "train.h5ad", "--input_test", directory / "test.h5ad",
                "--output", output]
        if component.component_type == "control_method":
            argv += ["--input_solution", directory / "solution.h5ad"]
        with open(directory / f"{component.name}.log", "w") as log:
            result = run_component(component.directory, [str(a) for a in argv], stdout=log, stderr=log)
        rows.append([f"{component.namespace}/{component.name}", result.exit_code, result.wall_seconds,
                     result.peak_rss_bytes / 2**20, output])
        print(f"  {component.name}: exit {result.exit_code}, {result.wall_seconds:.1f} s", file=sys.stderr)
    import anndata as ad

    solution = ad.read_h5ad(directory / "solution.h5ad")
    for row in rows:
        row[4] = pearson_delta(solution, ad.read_h5ad(row[4]).X, test_targets) if row[1] == 0 else float("nan")
    print(f"\n(peak memory is the component process's maximum RSS; this driver's own peak, {floor:.0f} MiB, is a "
          "floor under every value because a forked child inherits it)")
    print(f"\n| component | exit | wall time (s) | peak memory (MiB) | pearson_delta |")
    print("|---|---|---|---|---|")
    for name, code, wall, memory, score in rows:
        print(f"| {name} | {code} | {wall:.1f} | {memory:.0f} | {score:.3f} |")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return 0 if all(code == 0 for _, code, *_ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
