#!/usr/bin/env python3
"""Wall time and peak memory of the model-based methods on a large synthetic training set, and of the
single-cell models (GEARS, scGPT, CPA) on the real subsets.

    python benchmarks/models.py [--n_perturbations 2000] [--n_genes 8000] [--n_test 200]
        [--methods ridge_regulators latent_additive] [--cpus 2] [--keep DIR]
    python benchmarks/models.py --real [--cell_models gears scgpt cpa] [--subsets norman2019_devel datlinger2017]
        [--quick] [--set MODEL.ARGUMENT=VALUE ...] [--cpus 2] [--keep DIR]

`--real`: each subset's split (norman2019_devel: unseen_combination; datlinger2017: cell_type_transfer,
which holds out one stimulation state) is made by the task component from the real cells in
../shared/data, with its train_cells.h5ad built as tests/test_models_cells.py builds it; each model is
trained on the cells and predicts every held-out condition on CPU, through the runner (its own
environment where its config asks for one: built or reused before the clock starts, and its build time
reported). `--quick` uses the tiny settings of the component tests instead of the components' defaults;
`--set scgpt.epochs=1` sets one argument of one model (over the defaults or `--quick`), e.g. the settings a
benchmark run gave through `$PERTURBCAST_<MODEL>_ARGS`; every setting used is printed.

Writes a train / test pair in the API formats (src/api/file_train.yaml, file_test.yaml) straight from a
seeded low-rank effect model, without simulating cells: one cell type, `--n_control` control profiles,
two replicate profiles per training perturbation (each a single measured target gene), `--n_test`
held-out single perturbations whose targets were never perturbed in training, revealed target levels.
Each method runs through the viash-compatible runner (`perturbcast.runner.run_component`), which
measures the wall time and the peak resident memory of the component process; the table goes to stdout.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perturbcast.runner import run_component  # noqa: E402

CELL_MODELS = {"gears": "src/methods/gears", "scgpt": "src/methods/scgpt", "cpa": "src/methods/cpa"}
REAL_SUBSETS = {"norman2019_devel": ("norman19", "unseen_combination"),
                "datlinger2017": ("datlinger2017", "cell_type_transfer")}
QUICK = {"gears": {"epochs": 1, "max_cells_per_condition": 40, "hidden_size": 16, "batch_size": 64},
         "scgpt": {"epochs": 1, "max_steps_per_epoch": 4, "embsize": 16, "nlayers": 1, "nhead": 2, "batch_size": 32,
                   "max_cells_per_condition": 20, "n_query_cells": 10, "max_seq_len": 256},
         "cpa": {"max_epochs": 3, "max_cells_per_condition": 40, "n_query_cells": 30, "n_latent": 8}}
GO_ANNOTATION = ROOT.parent / "shared" / "data" / "human_gene2go_orgHsEgDb_3.16.0.tsv.gz"
METHODS = {"ridge_regulators": "src/methods/ridge_regulators", "latent_additive": "src/methods/latent_additive"}
UNS = {"dataset_id": "synthetic_large", "task_id": "unseen_perturbation", "split_seed": 0, "normalization_id": "log1p"}


def make_data(directory: Path, n_perturbations: int, n_genes: int, n_test: int, n_control: int, seed: int = 0):
    """train.h5ad and test.h5ad: x = base + loadings @ loadings[target] * 0.3, target knocked down, + noise."""
    rng = np.random.default_rng(seed)
    if n_perturbations + n_test > n_genes:
        sys.exit(f"[error] {n_perturbations} + {n_test} targets need at least as many genes (got {n_genes})")
    width = len(str(n_genes))
    genes = [f"G{i:0{width}d}" for i in range(n_genes)]
    loadings = rng.normal(0.0, 1.0, size=(n_genes, 20)) / np.sqrt(20)
    base = rng.gamma(2.0, 1.0, size=n_genes).astype(np.float32)
    targets = rng.permutation(n_genes)[: n_perturbations + n_test]
    train_targets, test_targets = targets[:n_perturbations], targets[n_perturbations:]

    def profile(target, n):
        effect = (loadings @ loadings[target]) * 0.3
        effect[target] -= 1.0
        return base + effect + rng.normal(0.0, 0.1, size=(n, n_genes))

    blocks = [base + rng.normal(0.0, 0.1, size=(n_control, n_genes))]
    names, replicates = ["control"] * n_control, [f"r{i + 1}" for i in range(n_control)]
    for t in train_targets:
        blocks.append(profile(t, 2))
        names += [genes[t]] * 2
        replicates += ["r1", "r2"]
    X = np.vstack(blocks).astype(np.float32)
    obs = pd.DataFrame({
        "perturbation": names, "is_control": [n == "control" for n in names], "perturbation_type": "knockdown",
        "n_targets": np.array([0 if n == "control" else 1 for n in names], dtype=np.int64),
        "cell_type": "synthetic", "condition": "none", "replicate": replicates,
        "n_cells": np.full(len(names), 100, dtype=np.int64),
    }, index=[f"{n}|synthetic|none|{r}" for n, r in zip(names, replicates)])
    var = pd.DataFrame({"highly_variable_rank": np.arange(n_genes, dtype=np.int64),
                        "mean_expression": X.mean(axis=0).astype(np.float64)}, index=pd.Index(genes, dtype=object))
    ad.AnnData(X=X, obs=obs, var=var, uns=dict(UNS)).write_h5ad(directory / "train.h5ad")

    levels = [f"{float(profile(t, 1)[0, t]):.6g}" for t in test_targets]
    test_names = [genes[t] for t in test_targets]
    test_obs = pd.DataFrame({
        "perturbation": test_names, "perturbation_type": "knockdown",
        "n_targets": np.ones(n_test, dtype=np.int64), "cell_type": "synthetic", "condition": "none",
        "stratum": "single", "target_expression": levels,
    }, index=[f"{n}|synthetic|none" for n in test_names])
    ad.AnnData(X=sp.csr_matrix((n_test, n_genes), dtype=np.float32), obs=test_obs,
               var=var[["highly_variable_rank"]].copy(), uns=dict(UNS)).write_h5ad(directory / "test.h5ad")
    return X.shape


def real_subsets(args, directory: Path) -> list:
    """Train + predict wall time and peak memory of each cell model on each real subset (see the module text)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from perturbcast import envs
    from perturbcast.config import load_config
    from test_models_cells import make_split

    rows = []
    for subset in args.subsets:
        source, task = REAL_SUBSETS[subset]
        split = make_split(directory / subset, source, task)
        for model in args.cell_models:
            config = load_config(ROOT / CELL_MODELS[model])
            if envs.wanted(config.raw):
                try:
                    environment = envs.ensure(config.name, config.raw)
                    print(f"{model}: environment {'built' if environment.built else 'reused'} "
                          f"({environment.build_seconds:.0f} s to build) at {environment.path}", flush=True)
                except envs.EnvironmentError_ as error:
                    print(f"[not installed] {error}", flush=True)
            settings = dict(QUICK[model]) if args.quick else {}
            settings.update(args.settings.get(model, {}))
            if model == "gears" and GO_ANNOTATION.exists():
                settings["go_annotation"] = GO_ANNOTATION
            argv = ["--input_train", str(split / "train.h5ad"), "--input_test", str(split / "test.h5ad"),
                    "--input_train_cells", str(split / "train_cells.h5ad"),
                    "--output", str(split / f"{model}.h5ad")]
            argv += [x for key, value in settings.items() for x in (f"--{key}", str(value))]
            print(f"{model}: settings {({k: str(v) for k, v in settings.items()}) or 'the defaults'}", flush=True)
            log = split / f"{model}.log"
            with open(log, "w") as handle:
                result = run_component(ROOT / CELL_MODELS[model], argv, stdout=handle, stderr=handle, cpus=args.cpus)
            rows.append((f"{model} / {subset} ({task})", result.exit_code, result.wall_seconds,
                         result.peak_rss_bytes / 2 ** 30))
            print(f"{model:6s} {subset:17s} exit {result.exit_code}  wall {result.wall_seconds:7.1f} s  "
                  f"peak memory {result.peak_rss_bytes / 2 ** 30:5.2f} GiB", flush=True)
            for line in log.read_text().splitlines():
                if line.startswith(("[", f"{model}:")):
                    print(f"    {line}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="the cell models on the real subsets")
    parser.add_argument("--cell_models", nargs="+", default=list(CELL_MODELS), choices=list(CELL_MODELS))
    parser.add_argument("--subsets", nargs="+", default=list(REAL_SUBSETS), choices=list(REAL_SUBSETS))
    parser.add_argument("--quick", action="store_true", help="tiny settings (those of the component tests)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="MODEL.ARGUMENT=VALUE",
                        help="one argument of one cell model, e.g. gears.epochs=2 (repeatable)")
    parser.add_argument("--n_perturbations", type=int, default=2000)
    parser.add_argument("--n_genes", type=int, default=8000)
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--n_control", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--cpus", type=int, default=None, help="passed as ---cpus (torch threads)")
    parser.add_argument("--keep", type=Path, default=None, help="write data and predictions here and keep them")
    args = parser.parse_args()
    settings: dict = {}
    for item in args.settings:
        key, _, value = item.partition("=")
        model, _, argument = key.partition(".")
        if model not in CELL_MODELS or not argument or not value:
            parser.error(f"--set {item}: expected MODEL.ARGUMENT=VALUE with MODEL one of {', '.join(CELL_MODELS)}")
        settings.setdefault(model, {})[argument] = value
    args.settings = settings

    directory = args.keep or Path(tempfile.mkdtemp(prefix="perturbcast_models_"))
    directory.mkdir(parents=True, exist_ok=True)
    if args.real:
        try:
            rows = real_subsets(args, directory)
        finally:
            if args.keep is None:
                shutil.rmtree(directory, ignore_errors=True)
        return 0 if all(code in (0, 99) for _, code, _, _ in rows) else 1
    started = time.time()
    shape = make_data(directory, args.n_perturbations, args.n_genes, args.n_test, args.n_control)
    print(f"data: train {shape[0]} profiles x {shape[1]} genes ({args.n_perturbations} perturbations x 2 replicates "
          f"+ {args.n_control} controls), test {args.n_test} unseen single perturbations; "
          f"made in {time.time() - started:.1f} s", flush=True)
    rows = []
    try:
        for method in args.methods:
            log = directory / f"{method}.log"
            argv = ["--input_train", str(directory / "train.h5ad"), "--input_test", str(directory / "test.h5ad"),
                    "--output", str(directory / f"{method}.h5ad")]
            with open(log, "w") as handle:
                result = run_component(ROOT / METHODS[method], argv, stdout=handle, stderr=handle, cpus=args.cpus)
            rows.append((method, result.exit_code, result.wall_seconds, result.peak_rss_bytes / 2 ** 30))
            print(f"{method:18s} exit {result.exit_code}  wall {result.wall_seconds:7.1f} s  "
                  f"peak memory {result.peak_rss_bytes / 2 ** 30:5.2f} GiB", flush=True)
            for line in log.read_text().splitlines():
                print(f"    {line}")
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0 if all(code == 0 for _, code, _, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
