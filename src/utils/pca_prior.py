"""A gene embedding from another dataset's perturbations: the "pretrained" P of the Ahlmann-Eltze linear model.

Shared by `scripts/make_prior.py` and the prior component `src/priors/other_dataset_pca`, so that both make the
same embedding from the same file. Included as a viash resource (needs baselines, vocabulary, numpy, pandas,
anndata).

    prior, n_conditions = pca_prior(reference, n_components=10)     # raises baselines.InputError

The embedding is computed exactly as `linear_baseline` computes its G: each perturbation's replicate profiles
are averaged per cell_type x condition, the context's mean control profile is subtracted, each condition's delta
is centred on the mean delta of its context, and the genes x conditions matrix is decomposed by PCA with genes as
observations; `varm['gene_embedding']` holds the top principal-component scores of every gene of the reference.
`obs` has one row per component (`PC1`, ...) with `X` = the embedding transposed and the share of variance each
component explains.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

import baselines

REQUIRED_OBS = ("perturbation", "is_control", "perturbation_type", "cell_type", "condition")


def pca_prior(adata, n_components: int, regulators=None, exclude_perturbations=(), prior_id=None):
    """The prior AnnData of `adata` (a common dataset or train file) and its number of conditions.

    `regulators` (a set of symbols) fills var['is_regulator']; rows whose perturbation is in
    `exclude_perturbations` are dropped first (in every context). Raises baselines.InputError with a
    one-line reason."""
    import anndata as ad

    for column in REQUIRED_OBS:
        if column not in adata.obs.columns:
            raise baselines.InputError(f"obs['{column}'] is missing (expected a common dataset or train file)")
    exclude_perturbations = set(exclude_perturbations) - {baselines.CONTROL}
    if exclude_perturbations:
        adata = adata[~adata.obs["perturbation"].astype(str).isin(exclude_perturbations).to_numpy()]
    profiles = baselines.TrainingProfiles(adata)
    deltas = profiles.deltas()
    # centring on the context's mean delta keeps a cell line's overall response (shared by all of its
    # perturbations) out of the gene loadings, as linear_baseline does
    context_mean = {c: deltas[profiles.rows_in(c)].mean(axis=0) for c in profiles.contexts}
    centred = deltas - np.vstack([context_mean[c] for c in profiles.obs["context"]])
    embedding = baselines.gene_pca(centred.T, n_components)
    k = embedding.shape[1]
    total = float(((centred - centred.mean(axis=1, keepdims=True)) ** 2).sum())
    explained = (embedding ** 2).sum(axis=0) / total if total > 0 else np.zeros(k)
    var = pd.DataFrame(index=pd.Index(profiles.genes, dtype=object))
    if regulators is not None:
        var["is_regulator"] = np.array([g in regulators for g in profiles.genes], dtype=bool)
    obs = pd.DataFrame({"explained_variance_ratio": explained.astype(np.float64)},
                       index=pd.Index([f"PC{i + 1}" for i in range(k)], dtype=object))
    dataset_id = str(adata.uns.get("dataset_id", "unknown"))
    uns = {"prior_id": prior_id or f"pca_{dataset_id}_k{k}", "source_dataset_id": dataset_id,
           "n_source_conditions": int(profiles.n_conditions), "n_components": int(k),
           "method": "PCA (genes as observations) of context-centred pseudobulk deltas to control"}
    prior = ad.AnnData(X=embedding.T.astype(np.float32), obs=obs, var=var, uns=uns)
    prior.varm["gene_embedding"] = embedding.astype(np.float32)
    return prior, profiles.n_conditions
