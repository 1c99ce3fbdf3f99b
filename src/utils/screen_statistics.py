"""Statistics that say how hard a perturbation screen is to forecast (numpy and pandas only).

Used to fit the simulated_grn defaults to real screens (benchmarks/dataset_statistics.py prints both side
by side). Every statistic is computed per context (cell_type x condition) on common-dataset profiles with
two replicates (`r1`, `r2`, or any two replicate labels), then pooled over contexts:

- `median_pairwise_delta_correlation`: as in dataset_report.py, the median Pearson correlation between
  the deltas (replicate mean minus control mean) of every pair of perturbations of a context;
- `split_half_correlation`: per perturbation, the Pearson correlation between the deltas of its two
  replicates, each against the control of the same replicate, its target genes left out; reported as
  the median over perturbations (dataset_report's `replicate_reproducibility` is the mean);
- `share_reproducible`: share of perturbations whose split-half correlation exceeds REPRODUCIBLE_R.
  Under no effect the two halves' deltas are independent noise and their correlation is about
  0 +- 1/sqrt(n_genes) (0.07 at 200 genes, 0.02 at 2,000); 0.2 is beyond that noise at any panel size
  used here while a weak but real effect (a few genes moved clearly) passes it;
- `effect_to_noise`: median over perturbations of |mean delta|^2 summed over genes divided by the same sum
  of the split-half difference's expected contribution ((d1 - d2)^2 / 4 estimates the noise variance of
  the mean delta); 1 means a perturbation's mean delta is as large as its own sampling noise;
- `target_change`: median over single perturbations of the target gene's mean delta (log scale), where
  the target is measured: how much of the perturbation the revealed mRNA shows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vocabulary import targets as targets_of
REPRODUCIBLE_R = 0.2
MAX_PAIRWISE = 1500


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _pairwise(deltas: np.ndarray) -> np.ndarray:
    centred = deltas - deltas.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred * centred).sum(axis=1))
    centred = centred[norms > 0] / norms[norms > 0, None]
    if len(centred) < 2:
        return np.empty(0)
    return (centred @ centred.T)[np.triu_indices(len(centred), k=1)]


def screen_statistics(adata, seed: int = 0) -> dict:
    """The statistics of the module docstring for a common dataset (AnnData in the common format)."""
    obs = adata.obs
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    X = X.astype(np.float64, copy=False)
    genes = pd.Index(adata.var_names.astype(str))
    perturbation = obs["perturbation"].astype(str).to_numpy()
    replicate = obs["replicate"].astype(str).to_numpy()
    is_control = obs["is_control"].to_numpy(dtype=bool)
    rng = np.random.default_rng(seed)
    pairwise, split_half, ratios, target_changes = [], [], [], []
    for _, rows in obs.groupby(["cell_type", "condition"], observed=True, sort=True).indices.items():
        rows = np.asarray(rows)
        controls = rows[is_control[rows]]
        if len(controls) == 0:
            continue
        control_mean = X[controls].mean(axis=0)
        control_of = {r: X[controls[replicate[controls] == r]].mean(axis=0) for r in np.unique(replicate[controls])}
        perturbed = rows[~is_control[rows]]
        means = []
        for name, members in pd.Series(perturbed).groupby(perturbation[perturbed], sort=True):
            members = members.to_numpy()
            delta = X[members].mean(axis=0) - control_mean
            means.append(delta)
            targets = targets_of(name)
            keep = ~genes.isin(targets)
            if len(targets) == 1 and targets[0] in genes:
                target_changes.append(float(delta[genes.get_loc(targets[0])]))
            if len(members) < 2:
                continue
            first, second = sorted(members, key=lambda i: replicate[i])[:2]
            d1 = X[first] - control_of.get(replicate[first], control_mean)
            d2 = X[second] - control_of.get(replicate[second], control_mean)
            split_half.append(_pearson(d1[keep], d2[keep]))
            noise = (((d1 - d2) / 2.0) ** 2)[keep].sum()
            signal = (((d1 + d2) / 2.0) ** 2)[keep].sum()
            # signal estimates |true delta|^2 + noise; subtracting the noise term leaves the effect alone
            ratios.append(max(signal - noise, 0.0) / noise if noise > 0 else np.nan)
        if len(means) >= 2:
            deltas = np.vstack(means)
            if len(deltas) > MAX_PAIRWISE:
                deltas = deltas[np.sort(rng.choice(len(deltas), MAX_PAIRWISE, replace=False))]
            pairwise.append(_pairwise(deltas))
    pairwise = np.concatenate(pairwise) if pairwise else np.empty(0)
    split_half = np.asarray([v for v in split_half if np.isfinite(v)])
    ratios = np.asarray([v for v in ratios if np.isfinite(v)])

    def median(values):
        return float(np.median(values)) if len(values) else float("nan")

    return {
        "n_perturbation_contexts": int(len(split_half)),
        "median_pairwise_delta_correlation": median(pairwise),
        "split_half_correlation": median(split_half),
        "share_reproducible": float((split_half > REPRODUCIBLE_R).mean()) if len(split_half) else float("nan"),
        "effect_to_noise": median(ratios),
        "target_change": median(target_changes),
    }
