"""The dataset card every loader writes into `uns['dataset_report']` and prints (numpy and pandas only).

    from dataset_report import dataset_report
    adata.uns["dataset_report"] = dataset_report(adata, log=log)

It tells a reader how much perturbation-specific signal a dataset holds (see docs: Csendes et al. 2025,
PEREGGRN) and how it was made:
- size: profiles, conditions, perturbations per type, combinations, cell types, conditions, genes; cells per
  profile (median, min) and per condition (perturbation x cell type x condition: min, median, max);
- replicates: `replicate_kind` (`biological`: profiles follow the source's replicate labels; `random_half`:
  seeded random halves of each condition's cells; `not stated` for files that predate the field), the
  replicate column, the number of replicate labels and of replicates per condition (min, median, max);
- what the loader left out or chose (copied from uns where the loader wrote it): conditions with too few
  cells for two halves (`n_conditions_too_few_cells`, at `min_cells_per_half`), the gene selection;
- `targets_missing_from_panel`: target genes of the perturbations that are not among the genes (count and
  sorted list): their own knockdown cannot be scored;
- split-half reproducibility: per perturbation condition, its replicate profiles are put into two halves
  (`replicate_halves`: the dataset's replicate labels in natural order alternate between halves,
  so `r1`/`r2` are the halves and biological replicates go whole to one half); each half's delta is its
  mean minus the mean of the same context's control profiles of the same replicate labels (the context's
  control mean where those labels have no control), so the halves share no control noise; the Pearson
  correlation of the two deltas over genes, the perturbation's target genes left out, is its split-half
  correlation. `share_reproducible_effect`: share of perturbation conditions whose split-half correlation
  exceeds REPRODUCIBLE_R = 0.2 (a fixed threshold, not permutation-calibrated: without an effect the two
  deltas are independent noise and correlate about 0 +- 1/sqrt(n_genes), 0.07 at 200 genes, 0.02 at 2,000,
  so 0.2 is beyond noise at every panel size used here, while a perturbation that clearly moves a few
  genes passes it; the same threshold as src/utils/screen_statistics.py). `replicate_reproducibility` is
  the mean split-half correlation per context, then the mean over contexts;
- `median_pairwise_delta_correlation`: the median Pearson correlation between the deltas (replicate mean
  minus control mean) of every pair of perturbations in the same context. High: perturbations look alike,
  so the mean of the training perturbations already predicts a held-out one well;
- control noise (where the controls come in two parts, obs `control_part`, as the tasks use them): the same
  median with the two deltas of a pair taken against the two disjoint parts
  (`median_pairwise_delta_correlation_independent_controls`; what the shared control added to the first is
  its noise), and `control_noise_share`, the median over perturbation conditions of the share of an observed
  delta's sum of squares (condition mean minus the reference part) that is the reference part's own noise,
  estimated as half the squared difference of the two parts.
Values are plain Python scalars, small dicts and lists, so the report is written to h5ad as it is.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

import vocabulary
REPRODUCIBLE_R = 0.2
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


def _cross_correlations(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson correlations of row i of `first` with row j of `second` for every pair i < j."""
    def unit(rows):
        centred = rows - rows.mean(axis=1, keepdims=True)
        norms = np.sqrt((centred * centred).sum(axis=1, keepdims=True))
        return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
    correlation = unit(first) @ unit(second).T
    return correlation[np.triu_indices(len(first), k=1)]


def _finite_mean(values) -> float:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    return float(values.mean()) if len(values) else float("nan")


def _natural(labels) -> list[str]:
    def key(label):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(label))]
    return sorted({str(label) for label in labels}, key=key)


def replicate_halves(present, labels) -> tuple[list[str], list[str]]:
    """Two halves of a condition's replicate labels `present`: the dataset's `labels` in natural order
    (`rep2` before `rep10`) alternate between halves 1 and 2 (r1 -> 1, r2 -> 2; rep1, rep3 -> 1, rep2 -> 2);
    should that leave a half empty for this condition, its own labels alternate instead."""
    order = _natural(labels)
    present = [label for label in order if label in set(map(str, present))]
    first = [label for label in present if order.index(label) % 2 == 0]
    second = [label for label in present if order.index(label) % 2 == 1]
    if not first or not second:
        first, second = present[0::2], present[1::2]
    return first, second


def _spread(values, prefix: str) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {f"{prefix}_min": 0, f"{prefix}_median": 0.0, f"{prefix}_max": 0}
    return {f"{prefix}_min": int(values.min()), f"{prefix}_median": float(np.median(values)),
            f"{prefix}_max": int(values.max())}


def dataset_report(adata, *, seed: int = 0, max_pairwise: int = MAX_PAIRWISE, log=None) -> dict:
    """The report of a common dataset (see the module docstring); printed through `log` if given."""
    obs = adata.obs
    uns = adata.uns
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    X = X.astype(np.float64, copy=False)
    genes = pd.Index(adata.var_names.astype(str))
    perturbation = obs["perturbation"].astype(str).to_numpy()
    replicates = obs["replicate"].astype(str).to_numpy()
    all_labels = _natural(replicates)
    is_control = obs["is_control"].to_numpy(dtype=bool)
    n_cells = obs["n_cells"].to_numpy(dtype=np.int64) if "n_cells" in obs else np.zeros(len(obs), dtype=np.int64)
    perturbed = obs.loc[~is_control, ["perturbation", "perturbation_type", "n_targets"]].drop_duplicates("perturbation")
    rng = np.random.default_rng(seed)

    part = obs["control_part"].to_numpy(dtype=np.int64) if "control_part" in obs.columns else np.zeros(len(obs), np.int64)
    reproducibility, pairwise, pooled, split_half = {}, {}, [], []
    independent, noise_shares = [], []
    for (cell_type, condition), rows in obs.groupby(["cell_type", "condition"], observed=True, sort=True).indices.items():
        rows = np.asarray(rows)
        controls = rows[is_control[rows]]
        if len(controls) == 0:
            continue
        control_mean = X[controls].mean(axis=0)

        def control_of(labels):
            chosen = controls[np.isin(replicates[controls], labels)]
            return X[chosen].mean(axis=0) if len(chosen) else control_mean
        correlations, means = [], []
        by_perturbation = pd.Series(rows[~is_control[rows]]).groupby(perturbation[rows[~is_control[rows]]], sort=True)
        for name, members in by_perturbation:
            members = members.to_numpy()
            means.append(X[members].mean(axis=0) - control_mean)
            if len(members) < 2:
                continue
            first, second = replicate_halves(replicates[members], all_labels)
            keep = ~genes.isin(vocabulary.targets(name))
            d1 = X[members[np.isin(replicates[members], first)]].mean(axis=0) - control_of(first)
            d2 = X[members[np.isin(replicates[members], second)]].mean(axis=0) - control_of(second)
            correlations.append(_pearson(d1[keep], d2[keep]))
        key = _key(cell_type, condition)
        reproducibility[key] = _finite_mean(correlations)
        split_half += correlations
        parts = [controls[part[controls] == k] for k in (1, 2)]
        if len(means) and all(len(p) for p in parts):
            first_part, second_part = (X[p].mean(axis=0) for p in parts)
            profiles = np.vstack(means) + control_mean  # condition means
            against = profiles - second_part
            noise = 0.5 * float(((first_part - second_part) ** 2).sum())
            sizes = (against ** 2).sum(axis=1)
            noise_shares += [noise / size for size in sizes if size > 0]
            if len(profiles) >= 2:
                chosen = np.arange(len(profiles)) if len(profiles) <= max_pairwise else \
                    np.sort(rng.choice(len(profiles), max_pairwise, replace=False))
                independent.append(_cross_correlations(profiles[chosen] - first_part, profiles[chosen] - second_part))
        if len(means) >= 2:
            deltas = np.vstack(means)
            if len(deltas) > max_pairwise:
                deltas = deltas[np.sort(rng.choice(len(deltas), max_pairwise, replace=False))]
            values = _row_correlations(deltas)
            pairwise[key] = float(np.median(values)) if len(values) else float("nan")
            pooled.append(values)
    pooled = np.concatenate(pooled) if pooled else np.empty(0)
    independent = np.concatenate(independent) if independent else np.empty(0)
    split_half = np.asarray([v for v in split_half if np.isfinite(v)], dtype=np.float64)

    conditions = obs.groupby(["perturbation", "cell_type", "condition"], observed=True, sort=True)
    targets = sorted({t for p in perturbed["perturbation"].astype(str) for t in vocabulary.targets(p)})
    missing = [t for t in targets if t not in genes]
    report = {
        "n_profiles": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_cells": int(n_cells.sum()),
        "n_conditions": int(conditions.ngroups),
        "n_perturbations": int(len(perturbed)),
        "n_combinations": int((perturbed["n_targets"] >= 2).sum()),
        "perturbations_per_type": {str(k): int(v) for k, v in perturbed["perturbation_type"].value_counts().sort_index().items()},
        "n_cell_types": int(obs["cell_type"].nunique()),
        "cell_types": {_key(k): int(v) for k, v in obs.groupby("cell_type", observed=True)["perturbation"].nunique().items()},
        "n_condition_values": int(obs["condition"].nunique()),
        "conditions": {_key(k): int(v) for k, v in obs.groupby("condition", observed=True)["perturbation"].nunique().items()},
        "cells_per_profile_median": float(np.median(n_cells)) if len(n_cells) else 0.0,
        "cells_per_profile_min": int(n_cells.min()) if len(n_cells) else 0,
        **_spread(conditions["n_cells"].sum().to_numpy() if "n_cells" in obs else [], "cells_per_condition"),
        "replicate_kind": str(uns.get("replicate_kind", "not stated")),
        "replicate_column": str(uns.get("replicate_column", "none")),
        "n_replicates": int(len(all_labels)),
        **_spread(conditions["replicate"].nunique().to_numpy(), "replicates_per_condition"),
        "min_cells_per_half": int(uns.get("min_cells_per_half", 0)),
        "n_conditions_too_few_cells": int(uns.get("n_conditions_too_few_cells", 0)),
        "gene_selection": str(uns.get("gene_selection", "not stated")),
        "n_targets": int(len(targets)),
        "n_targets_missing_from_panel": int(len(missing)),
        "targets_missing_from_panel": missing,
        "reproducible_threshold": REPRODUCIBLE_R,
        "n_perturbation_conditions_assessed": int(len(split_half)),
        "n_reproducible_effect": int((split_half > REPRODUCIBLE_R).sum()),
        "share_reproducible_effect": float((split_half > REPRODUCIBLE_R).mean()) if len(split_half) else float("nan"),
        "split_half_correlation_median": float(np.median(split_half)) if len(split_half) else float("nan"),
        "replicate_reproducibility": _finite_mean(reproducibility.values()),
        "replicate_reproducibility_per_context": reproducibility,
        "median_pairwise_delta_correlation": float(np.median(pooled)) if len(pooled) else float("nan"),
        "median_pairwise_delta_correlation_per_context": pairwise,
        "median_pairwise_delta_correlation_independent_controls":
            float(np.median(independent)) if len(independent) else float("nan"),
        "control_noise_share": float(np.median(noise_shares)) if noise_shares else float("nan"),
    }
    if log is not None:
        for line in format_report(report, uns.get("dataset_id", "dataset")):
            log(line)
    return report


def format_report(report: dict, dataset_id: str) -> list[str]:
    types = ", ".join(f"{k} {v}" for k, v in report["perturbations_per_type"].items()) or "none"
    missing = list(report["targets_missing_from_panel"])
    shown = ", ".join(missing[:10]) + (f", ... {len(missing) - 10} more" if len(missing) > 10 else "")
    return [
        f"dataset report ({dataset_id}):",
        f"  {report['n_profiles']} profiles, {report['n_conditions']} conditions, {report['n_perturbations']} "
        f"perturbations ({types}; {report['n_combinations']} combinations), {report['n_genes']} genes",
        f"  cell types: {', '.join(f'{k} ({v})' for k, v in report['cell_types'].items())}; "
        f"conditions: {', '.join(f'{k} ({v})' for k, v in report['conditions'].items())}",
        f"  cells per profile: median {report['cells_per_profile_median']:g}, min {report['cells_per_profile_min']}; "
        f"per condition: min {report['cells_per_condition_min']}, median {report['cells_per_condition_median']:g}, "
        f"max {report['cells_per_condition_max']}",
        f"  replicates: {report['replicate_kind']} (column {report['replicate_column']}), {report['n_replicates']} "
        f"labels, {report['replicates_per_condition_min']}-{report['replicates_per_condition_max']} per condition",
        (f"  left out: {report['n_conditions_too_few_cells']} conditions with too few cells for two halves "
         f"(minimum {report['min_cells_per_half']} cells per half)" if report["min_cells_per_half"]
         else "  left out for too few cells: not recorded by the producer of this dataset"),
        f"  genes: {report['gene_selection']}",
        f"  targets missing from the gene panel: {report['n_targets_missing_from_panel']} of {report['n_targets']}"
        + (f" ({shown})" if missing else ""),
        f"  reproducible effect (split-half Pearson of deltas > {report['reproducible_threshold']:g}): "
        f"{report['n_reproducible_effect']} of {report['n_perturbation_conditions_assessed']} perturbation conditions "
        f"({report['share_reproducible_effect']:.2f}); median split-half Pearson {report['split_half_correlation_median']:.3f}",
        f"  replicate reproducibility (mean split-half Pearson per context): {report['replicate_reproducibility']:.3f}",
        f"  median pairwise Pearson of perturbation deltas: {report['median_pairwise_delta_correlation']:.3f}"
        + (f" (against disjoint control parts: {report['median_pairwise_delta_correlation_independent_controls']:.3f})"
           if np.isfinite(report.get("median_pairwise_delta_correlation_independent_controls", np.nan)) else ""),
        "  control noise share of an observed delta (median over perturbation conditions): "
        + (f"{report['control_noise_share']:.3f}" if np.isfinite(report.get("control_noise_share", np.nan))
           else "not measured (the controls have no two parts)"),
    ]
