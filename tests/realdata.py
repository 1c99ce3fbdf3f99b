"""Common datasets made from the real subsets in ../shared/data, for task and leakage tests.

Each builder pseudobulks cells the way a loader does (src/api/file_common_dataset.yaml): one profile per
perturbation x cell_type x condition x replicate, where the replicates `r1`/`r2` are a seeded random half
of the condition's cells (seeded per condition, so adding a condition does not reshuffle the others),
`X` = mean of the cells' log-normalized values (`normalization_id` `log_cp10k_cell_mean`, as the
PerturBench devel loader's, and the scperturb loader's default for Datlinger's counts), labels harmonised
(`control`, targets sorted and joined with `+`, modality names of the contract). The files are absent on a fresh clone elsewhere: the builders
call `conftest.shared_file`, which skips the calling test.
"""
from __future__ import annotations

import zlib
from functools import lru_cache

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from conftest import shared_file

DEVEL = "perturbench_devel.h5ad"
DATLINGER = "datlinger2017_jurkat_subset.h5ad"

_UNS = {"dataset_summary": "Real subset for tests.", "dataset_description": "Made by tests/realdata.py.",
        "dataset_organism": "homo_sapiens", "source_sha256": "0" * 64}


def harmonise_perturbation(label: str) -> str:
    """`ctrl` / `control` -> `control`; `B+A`, `A+ctrl` -> `A+B`, `A` (targets sorted, `ctrl` dropped)."""
    label = str(label)
    if label in ("control", "ctrl", ""):
        return "control"
    targets = sorted({t for t in label.split("+") if t and t != "ctrl"})
    return "+".join(targets) if targets else "control"


def pseudobulk(log_X, perturbation, perturbation_type, cell_type, condition, var_names, uns: dict,
               counts=None, seed: int = 0):
    """Common dataset from per-cell log-normalized values (and optional raw counts)."""
    log_X = sp.csr_matrix(log_X)
    counts = None if counts is None else sp.csr_matrix(counts)
    frame = pd.DataFrame({"perturbation": np.asarray(perturbation, dtype=object),
                          "cell_type": np.asarray(cell_type, dtype=object),
                          "condition": np.asarray(condition, dtype=object),
                          "perturbation_type": np.asarray(perturbation_type, dtype=object)})
    groups, records = [], []
    for key, rows in sorted(frame.groupby(list(frame.columns), sort=True).indices.items()):
        perturbation_, cell_type_, condition_, type_ = key
        label = "|".join(key)
        order = np.random.default_rng([int(seed), zlib.crc32(label.encode())]).permutation(np.sort(rows))
        halves = [("r1", order[: len(order) // 2]), ("r2", order[len(order) // 2:])] if len(order) >= 2 \
            else [("r1", order)]
        for replicate, half in halves:
            groups.append(np.sort(half))
            n_targets = 0 if perturbation_ == "control" else len(perturbation_.split("+"))
            records.append({"perturbation": perturbation_, "is_control": perturbation_ == "control",
                            "perturbation_type": type_, "n_targets": n_targets, "cell_type": cell_type_,
                            "condition": condition_, "replicate": replicate, "n_cells": len(half)})
    sizes = np.array([len(g) for g in groups])
    indicator = sp.csr_matrix((np.ones(sizes.sum()), (np.repeat(np.arange(len(groups)), sizes),
                                                       np.concatenate(groups))), shape=(len(groups), log_X.shape[0]))
    matrix = (sp.diags(1.0 / sizes) @ indicator @ log_X).toarray().astype(np.float32)
    obs = pd.DataFrame(records)
    obs["n_targets"] = obs["n_targets"].astype(np.int64)
    obs["n_cells"] = obs["n_cells"].astype(np.int64)
    obs.index = [f"{r.perturbation}|{r.cell_type}|{r.condition}|{r.perturbation_type}|{r.replicate}"
                 for r in obs.itertuples()]
    var = pd.DataFrame(index=pd.Index(np.asarray(var_names).astype(str), dtype=object))
    var["highly_variable_rank"] = np.argsort(np.argsort(-matrix.var(axis=0), kind="stable"),
                                             kind="stable").astype(np.int64)
    var["mean_expression"] = matrix.mean(axis=0).astype(np.float64)
    common = ad.AnnData(X=matrix, obs=obs, var=var, uns={**_UNS, **uns})
    if counts is not None:
        common.layers["counts"] = (indicator @ counts).toarray().astype(np.float32)
    return common


@lru_cache(maxsize=None)
def _devel():
    return ad.read_h5ad(shared_file(DEVEL))


@lru_cache(maxsize=None)
def _norman19(seed: int):
    cells = _devel()
    cells = cells[(cells.obs["dataset"] == "norman19").to_numpy()]
    perturbation = [harmonise_perturbation(c) for c in cells.obs["condition"].astype(str)]
    return pseudobulk(
        cells.X, perturbation, ["activation"] * cells.n_obs, ["K562"] * cells.n_obs, ["none"] * cells.n_obs,
        cells.var_names, seed=seed,
        uns={"dataset_id": "norman19_devel", "dataset_name": "Norman 2019 (PerturBench devel subset)",
             "dataset_url": "https://github.com/altoslabs/perturbench", "dataset_reference": "10.1126/science.aax4438",
             "normalization_id": "log_cp10k_cell_mean"})


@lru_cache(maxsize=None)
def _mcfaline23(seed: int):
    cells = _devel()
    cells = cells[(cells.obs["dataset"] == "mcfaline23").to_numpy()]
    perturbation = [harmonise_perturbation(c) for c in cells.obs["condition"].astype(str)]
    return pseudobulk(
        cells.X, perturbation, ["knockdown"] * cells.n_obs, cells.obs["cell_type"].astype(str).to_numpy(),
        ["none"] * cells.n_obs, cells.var_names, seed=seed,
        uns={"dataset_id": "mcfaline23_devel", "dataset_name": "McFaline-Figueroa 2023 (PerturBench devel subset)",
             "dataset_url": "https://github.com/altoslabs/perturbench",
             "dataset_reference": "10.1016/j.xgen.2023.100487", "normalization_id": "log_cp10k_cell_mean"})


@lru_cache(maxsize=None)
def _datlinger2017(seed: int):
    cells = ad.read_h5ad(shared_file(DATLINGER))
    counts = sp.csr_matrix(cells.X, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    log_X = sp.diags(1e4 / np.maximum(totals, 1.0)) @ counts
    log_X.data = np.log1p(log_X.data)
    perturbation = [harmonise_perturbation(p) for p in cells.obs["perturbation"].astype(str)]
    return pseudobulk(
        log_X, perturbation, ["knockout"] * cells.n_obs, ["Jurkat"] * cells.n_obs,
        cells.obs["perturbation_2"].astype(str).to_numpy(), cells.var_names, counts=counts, seed=seed,
        uns={"dataset_id": "datlinger2017_subset", "dataset_name": "Datlinger 2017 Jurkat CROP-seq (subset)",
             "dataset_url": "https://github.com/sanderlab/scPerturb", "dataset_reference": "10.1038/nmeth.4177",
             "normalization_id": "log_cp10k_cell_mean"})


def norman19_common(seed: int = 0):
    """Norman et al. 2019 (K562 CRISPRa, 18 singles and 15 pairs) from the PerturBench devel file."""
    return _norman19(int(seed)).copy()


def mcfaline23_common(seed: int = 0):
    """McFaline-Figueroa et al. 2023 (CRISPRi, 9 genes in the glioma lines A172, T98G, U87MG)."""
    return _mcfaline23(int(seed)).copy()


def datlinger2017_common(seed: int = 0):
    """Datlinger et al. 2017 (Jurkat CROP-seq, 20 knockouts, condition stimulated / unstimulated);
    raw counts -> log1p of counts per 10,000 per cell, then pseudobulked; `layers['counts']` summed counts."""
    return _datlinger2017(int(seed)).copy()
