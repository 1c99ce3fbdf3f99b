"""The dataset report every loader writes into `uns['dataset_report']` and prints (numpy and pandas only).

    from dataset_report import dataset_report
    adata.uns["dataset_report"] = dataset_report(adata, log=log)

It tells a reader how much perturbation-specific signal a dataset holds (see docs: Csendes et al. 2025,
PEREGGRN):
- size: profiles, conditions, perturbations per type, combinations, cell types, conditions, genes, cells per
  profile (median, min);
- `replicate_reproducibility`: per context (cell_type x condition), the mean over perturbations of the Pearson
  correlation between the two replicates' deltas (each replicate's profile minus the control profile of the
  same replicate, so control noise is not shared; the perturbation's target genes left out), then the mean
  over contexts. Near 0: the replicates barely agree beyond noise;
- `median_pairwise_delta_correlation`: the median Pearson correlation between the deltas (replicate mean minus
  control mean) of every pair of perturbations in the same context. High: perturbations look alike, so the
  mean of the training perturbations already predicts a held-out one well.
Values are plain Python scalars and small dicts, so the report is written to h5ad as it is.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

CONTROL = "control"
TARGET_SEPARATOR = "+"
# At most this many perturbations per context enter the pairwise correlation (a seeded sample beyond it):
# the matrix grows with its square.
MAX_PAIRWISE = 1500


def _key(*parts) -> str:
    return "|".join(str(p).replace("/", "_") for p in parts)  # '/' would nest groups in HDF5


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _row_correlations(deltas: np.ndarray) -> np.ndarray:
    """Upper-triangle Pearson correlations between the rows of `deltas` (rows without variance left out)."""
    centred = deltas - deltas.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred * centred).sum(axis=1))
    centred = centred[norms > 0] / norms[norms > 0, None]
    if len(centred) < 2:
        return np.empty(0)
    correlation = centred @ centred.T
    return correlation[np.triu_indices(len(centred), k=1)]


def _finite_mean(values) -> float:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    return float(values.mean()) if len(values) else float("nan")


def dataset_report(adata, *, seed: int = 0, max_pairwise: int = MAX_PAIRWISE, log=None) -> dict:
    """The report of a common dataset (see the module docstring); printed through `log` if given."""
    obs = adata.obs
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    X = X.astype(np.float64, copy=False)
    genes = pd.Index(adata.var_names)
    perturbation = obs["perturbation"].astype(str).to_numpy()
    is_control = obs["is_control"].to_numpy(dtype=bool)
    n_cells = obs["n_cells"].to_numpy(dtype=np.int64) if "n_cells" in obs else np.zeros(len(obs), dtype=np.int64)
    perturbed = obs.loc[~is_control, ["perturbation", "perturbation_type", "n_targets"]].drop_duplicates("perturbation")
    rng = np.random.default_rng(seed)

    reproducibility, pairwise, pooled = {}, {}, []
    for (cell_type, condition), rows in obs.groupby(["cell_type", "condition"], observed=True, sort=True).indices.items():
        rows = np.asarray(rows)
        controls = rows[is_control[rows]]
        if len(controls) == 0:
            continue
        replicates = obs["replicate"].to_numpy()
        control_mean = X[controls].mean(axis=0)
        control_of = {r: X[controls[replicates[controls] == r]].mean(axis=0)
                      for r in np.unique(replicates[controls])}
        correlations, means = [], []
        by_perturbation = pd.Series(rows[~is_control[rows]]).groupby(perturbation[rows[~is_control[rows]]], sort=True)
        for name, members in by_perturbation:
            members = members.to_numpy()
            means.append(X[members].mean(axis=0) - control_mean)
            if len(members) < 2:
                continue
            first, second = sorted(members, key=lambda i: replicates[i])[:2]
            keep = ~genes.isin(name.split(TARGET_SEPARATOR))
            d1 = X[first] - control_of.get(replicates[first], control_mean)
            d2 = X[second] - control_of.get(replicates[second], control_mean)
            correlations.append(_pearson(d1[keep], d2[keep]))
        key = _key(cell_type, condition)
        reproducibility[key] = _finite_mean(correlations)
        if len(means) >= 2:
            deltas = np.vstack(means)
            if len(deltas) > max_pairwise:
                deltas = deltas[np.sort(rng.choice(len(deltas), max_pairwise, replace=False))]
            values = _row_correlations(deltas)
            pairwise[key] = float(np.median(values)) if len(values) else float("nan")
            pooled.append(values)
    pooled = np.concatenate(pooled) if pooled else np.empty(0)

    report = {
        "n_profiles": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_cells": int(n_cells.sum()),
        "n_conditions": int(len(obs[["perturbation", "cell_type", "condition"]].drop_duplicates())),
        "n_perturbations": int(len(perturbed)),
        "n_combinations": int((perturbed["n_targets"] >= 2).sum()),
        "perturbations_per_type": {str(k): int(v) for k, v in perturbed["perturbation_type"].value_counts().sort_index().items()},
        "n_cell_types": int(obs["cell_type"].nunique()),
        "cell_types": {_key(k): int(v) for k, v in obs.groupby("cell_type", observed=True)["perturbation"].nunique().items()},
        "n_condition_values": int(obs["condition"].nunique()),
        "conditions": {_key(k): int(v) for k, v in obs.groupby("condition", observed=True)["perturbation"].nunique().items()},
        "cells_per_profile_median": float(np.median(n_cells)) if len(n_cells) else 0.0,
        "cells_per_profile_min": int(n_cells.min()) if len(n_cells) else 0,
        "replicate_reproducibility": _finite_mean(reproducibility.values()),
        "replicate_reproducibility_per_context": reproducibility,
        "median_pairwise_delta_correlation": float(np.median(pooled)) if len(pooled) else float("nan"),
        "median_pairwise_delta_correlation_per_context": pairwise,
    }
    if log is not None:
        for line in format_report(report, adata.uns.get("dataset_id", "dataset")):
            log(line)
    return report


def format_report(report: dict, dataset_id: str) -> list[str]:
    types = ", ".join(f"{k} {v}" for k, v in report["perturbations_per_type"].items()) or "none"
    return [
        f"dataset report ({dataset_id}):",
        f"  {report['n_profiles']} profiles, {report['n_conditions']} conditions, {report['n_perturbations']} "
        f"perturbations ({types}; {report['n_combinations']} combinations), {report['n_genes']} genes",
        f"  cell types: {', '.join(f'{k} ({v})' for k, v in report['cell_types'].items())}; "
        f"conditions: {', '.join(f'{k} ({v})' for k, v in report['conditions'].items())}",
        f"  cells per profile: median {report['cells_per_profile_median']:g}, min {report['cells_per_profile_min']}",
        f"  replicate reproducibility (mean Pearson of r1 vs r2 deltas): {report['replicate_reproducibility']:.3f}",
        f"  median pairwise Pearson of perturbation deltas: {report['median_pairwise_delta_correlation']:.3f}",
    ]
