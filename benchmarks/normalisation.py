#!/usr/bin/env python3
"""Which profile normalisation of count data? Both, measured on every real count subset of ../shared/data.

    python benchmarks/normalisation.py [--shared_data DIR] [--seed 0] [--workdir DIR]

Runs the scperturb loader (through perturbcast.runner, exactly as the benchmark does) on the Datlinger 2017
subset (the only real subset with raw counts; PerturBench's devel file is log-normalised per cell) with the
condition column `perturbation_2` (stimulated or not), once per `--normalization`:
`log_cp10k` (log1p(cp10k) of the counts summed over a profile's cells) and `log_cp10k_cell_mean` (the
mean over the cells of each cell's log1p(cp10k)), for each seed of the random halves (`--seeds`). It prints:

- reproducible effects: perturbation conditions with a reproducible effect (split-half Pearson of deltas
  > 0.2, `src/utils/dataset_report.py`, whose halves share no control noise), of those assessed;
- r(value sum, ...): Pearson of a profile's value sum with the log of its summed counts (its pooled depth,
  over all profiles), and within each context (cell type x condition, then the mean over contexts) with the
  log of its number of cells and with the log of its depth per cell; beside them the correlation of those
  two, which is all a profile free of pool-size bias inherits from its number of cells;
- train_mean-like r: per context, each perturbation's delta (its profiles' mean minus the controls') against
  the mean delta of the context's other perturbations (what train_mean predicts), Pearson over genes, median
  over perturbations; `shared control`: both deltas against the same control estimate (as today);
  `independent halves`: the observed delta against one random half of the control cells (profile r1), the
  prediction against the other (r2), so that the two share no control noise;
- control noise share: the share of the observed delta's variance (over genes) that is the control
  estimate's noise: the variance of (c1 - c2) / 2 for the disjoint control halves c1, c2 (the noise of their
  mean), over the mean over perturbations of the variance of the delta against (c1 + c2) / 2; per context,
  then the median over contexts;
- mean delta: the mean over genes and perturbations of the delta (mean over contexts); 0 without a global
  shift (a depth bias of the control against the perturbations shows here).
Not part of the test suite; each loader run takes a few seconds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402

from perturbcast.runner import run_component  # noqa: E402

NORMALISATIONS = ("log_cp10k", "log_cp10k_cell_mean")
SUBSETS = {"datlinger2017": ("datlinger2017_jurkat_subset.h5ad", "scperturb",
                             ["--study", "DatlingerBock2017", "--condition_column", "perturbation_2"])}


def load(source: Path, component: str, args: list, normalization: str, seed: int, workdir: Path) -> ad.AnnData:
    output = workdir / f"{source.stem}_{normalization}_seed{seed}.h5ad"
    argv = [*args, "--input", str(source), "--normalization", normalization, "--seed", str(seed), "--output", str(output)]
    with open(workdir / f"{output.stem}.log", "w") as log:
        result = run_component(ROOT / "src" / "datasets" / component, argv, stdout=log, stderr=log)
    if result.exit_code != 0:
        sys.exit(f"[error] the {component} loader failed on {source} (log: {workdir / (output.stem + '.log')})")
    return ad.read_h5ad(output)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


ROWS = [("reproducible", "reproducible effects (split-half r > 0.2)", "{}"),
        ("r_depth", "r(value sum, log depth), all profiles", "{:.3f}"),
        ("r_cells", "r(value sum, log cells), within context", "{:.3f}"),
        ("r_depth_per_cell", "r(value sum, log depth/cell), within ctx", "{:.3f}"),
        ("r_cells_depth_per_cell", "r(log cells, log depth/cell), within ctx", "{:.3f}"),
        ("shared", "train_mean-like r, shared control", "{:.3f}"),
        ("independent", "train_mean-like r, independent halves", "{:.3f}"),
        ("noise_share", "control noise share of delta variance", "{:.3f}"),
        ("mean_delta", "mean delta (genes x perturbations)", "{:+.4f}")]


def measures(adata: ad.AnnData) -> dict:
    X = np.asarray(adata.X, dtype=np.float64)
    obs = adata.obs
    is_control = obs["is_control"].to_numpy(dtype=bool)
    replicate = obs["replicate"].astype(str).to_numpy()
    perturbation = obs["perturbation"].astype(str).to_numpy()
    log_depth = np.log(np.asarray(adata.layers["counts"], dtype=np.float64).sum(axis=1))
    log_cells = np.log(obs["n_cells"].to_numpy(dtype=np.float64))
    value_sum = X.sum(axis=1)
    within = {"r_cells": [], "r_depth_per_cell": [], "r_cells_depth_per_cell": []}
    shared, independent, noise_share, mean_delta = [], [], [], []
    for _, rows in obs.groupby(["cell_type", "condition"], observed=True).indices.items():
        rows = np.asarray(rows)
        within["r_cells"].append(_pearson(value_sum[rows], log_cells[rows]))
        within["r_depth_per_cell"].append(_pearson(value_sum[rows], log_depth[rows] - log_cells[rows]))
        within["r_cells_depth_per_cell"].append(_pearson(log_cells[rows], log_depth[rows] - log_cells[rows]))
        halves = [rows[is_control[rows] & (replicate[rows] == r)] for r in ("r1", "r2")]
        if min(len(h) for h in halves) == 0:
            continue
        c1, c2 = X[halves[0]].mean(axis=0), X[halves[1]].mean(axis=0)
        c = (c1 + c2) / 2
        perturbed = rows[~is_control[rows]]
        means = np.vstack([X[perturbed[perturbation[perturbed] == p]].mean(axis=0)
                           for p in sorted(set(perturbation[perturbed]))])
        deltas = means - c
        noise_share.append(float(((c1 - c2) / 2).var() / deltas.var(axis=1).mean()))
        mean_delta.append(float(deltas.mean()))
        for i in range(len(means)):
            others = means[np.arange(len(means)) != i].mean(axis=0)
            shared.append(_pearson(means[i] - c, others - c))
            independent.append(_pearson(means[i] - c1, others - c2))
    report = adata.uns["dataset_report"]
    return {"reproducible": f"{report['n_reproducible_effect']} of {report['n_perturbation_conditions_assessed']}",
            "r_depth": _pearson(value_sum, log_depth), **{k: float(np.mean(v)) for k, v in within.items()},
            "shared": float(np.median(shared)), "independent": float(np.median(independent)),
            "noise_share": float(np.median(noise_share)), "mean_delta": float(np.mean(mean_delta))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared_data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the loader's random halves")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="normalisation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name, (file_name, component, loader_args) in SUBSETS.items():
        source = args.shared_data / file_name
        if not source.exists():
            print(f"[warning] {source} is absent: {name} left out", file=sys.stderr)
            continue
        columns = [(normalization, seed) for normalization in NORMALISATIONS for seed in args.seeds]
        results = {column: measures(load(source, component, loader_args, *column, workdir)) for column in columns}
        print(f"{name} ({source.name}; columns: normalisation, seed of the random halves)")
        print(f"{'':42}" + "".join(f"{n[:19] + ' s' + str(s):>24}" for n, s in columns))
        for key, label, form in ROWS:
            print(f"{label:42}" + "".join(f"{form.format(results[column][key]):>24}" for column in columns))


if __name__ == "__main__":
    main()
