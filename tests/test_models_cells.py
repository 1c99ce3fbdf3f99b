"""Train/test splits with their cells (CELLS_CONTRACT: train_cells.h5ad) made from the real subsets, for the
model components' tests (test_models_gears.py, test_models_cpa.py, test_models_scgpt.py).

Until the tasks write `train_cells.h5ad` themselves, the cells of a split are taken from the same source
cells the common dataset was pseudobulked from (tests/realdata.py): every cell of a training condition
(perturbation x cell_type x condition of a row of train.h5ad) and every control cell, with the obs the
contract names, `replicate` being the seeded half the cell was pseudobulked into.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import pytest

import realdata
from test_methods_models import run

OBS = ("perturbation", "is_control", "perturbation_type", "n_targets", "cell_type", "condition", "replicate")


def source_cells(dataset: str):
    """(log-normalised cells, obs) of a real subset, labelled as realdata's pseudobulk labels them."""
    if dataset == "norman19":
        cells = realdata._devel()
        cells = cells[(cells.obs["dataset"] == "norman19").to_numpy()]
        obs = pd.DataFrame({
            "perturbation": [realdata.harmonise_perturbation(c) for c in cells.obs["condition"].astype(str)],
            "perturbation_type": "activation", "cell_type": "K562", "condition": "none"},
            index=cells.obs_names.astype(str))
        return sp.csr_matrix(cells.X, dtype=np.float32), obs, cells.var_names
    if dataset == "datlinger2017":
        cells = ad.read_h5ad(realdata.shared_file(realdata.DATLINGER))
        counts = sp.csr_matrix(cells.X, dtype=np.float64)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        log_X = sp.diags(1e4 / np.maximum(totals, 1.0)) @ counts
        log_X.data = np.log1p(log_X.data)
        obs = pd.DataFrame({
            "perturbation": [realdata.harmonise_perturbation(p) for p in cells.obs["perturbation"].astype(str)],
            "perturbation_type": "knockout", "cell_type": "Jurkat",
            "condition": cells.obs["perturbation_2"].astype(str).to_numpy()}, index=cells.obs_names.astype(str))
        return sp.csr_matrix(log_X, dtype=np.float32), obs, cells.var_names
    raise ValueError(dataset)


def common_of(dataset: str):
    return realdata.norman19_common() if dataset == "norman19" else realdata.datlinger2017_common()


def make_split(directory: Path, dataset: str, task: str, seed: int = 0) -> Path:
    """train/test/solution.h5ad by the task component, and train_cells.h5ad by the contract."""
    directory.mkdir(parents=True, exist_ok=True)
    common = directory / "common.h5ad"
    common_of(dataset).write_h5ad(common)
    code, err = run(f"src/tasks/{task}", {"input": common, "output_train": directory / "train.h5ad",
                                          "output_test": directory / "test.h5ad",
                                          "output_solution": directory / "solution.h5ad", "seed": seed},
                    directory / "task.log")
    assert code == 0, err
    train = ad.read_h5ad(directory / "train.h5ad")
    X, obs, genes = source_cells(dataset)
    keys = set(zip(train.obs["perturbation"].astype(str), train.obs["cell_type"].astype(str),
                   train.obs["condition"].astype(str)))
    keep = np.array([k in keys or k[0] == "control" for k in
                     zip(obs["perturbation"], obs["cell_type"], obs["condition"])])
    obs = obs[keep].copy()
    obs["is_control"] = obs["perturbation"] == "control"
    obs["n_targets"] = [0 if p == "control" else len(p.split("+")) for p in obs["perturbation"]]
    obs["replicate"] = "r1"
    for key, rows in obs.groupby(["perturbation", "cell_type", "condition", "perturbation_type"]).indices.items():
        order = np.random.default_rng([seed, zlib.crc32("|".join(key).encode())]).permutation(np.sort(rows))
        obs.iloc[order[len(order) // 2:], obs.columns.get_loc("replicate")] = "r2"
    gene_position = pd.Index(genes.astype(str)).get_indexer(train.var_names.astype(str))
    assert (gene_position >= 0).all()
    cells = ad.AnnData(X=X[keep][:, gene_position], obs=obs[list(OBS)],
                       var=pd.DataFrame(index=train.var_names.astype(str)),
                       uns={k: train.uns[k] for k in ("dataset_id", "task_id", "split_seed", "normalization_id")
                            if k in train.uns})
    cells.write_h5ad(directory / "train_cells.h5ad")
    return directory


def test_train_cells_hold_training_conditions_and_controls_only(tmp_path):
    split = make_split(tmp_path / "norman", "norman19", "unseen_combination")
    cells = ad.read_h5ad(split / "train_cells.h5ad")
    test = ad.read_h5ad(split / "test.h5ad")
    held_out = set(test.obs["perturbation"].astype(str))
    seen = set(cells.obs["perturbation"].astype(str))
    assert held_out and not held_out & seen
    assert "control" in seen and cells.obs["is_control"].sum() == (cells.obs["perturbation"] == "control").sum()
    assert list(cells.var_names) == list(ad.read_h5ad(split / "train.h5ad").var_names)
    assert set(cells.obs["replicate"]) == {"r1", "r2"}


def test_profiles_from_predicted_cells_average_before_clipping():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "utils"))
    import baselines

    cells = np.array([[1.0, -0.5], [3.0, -0.1], [-2.0, 0.4], [1.0, 0.2]])
    profiles, clipped_cells, share, message = baselines.profiles_from_predicted_cells(
        cells, ["a", "a", "b", "b"], ["b", "a"], "model", "log_cp10k_cell_mean")
    # b averages to (-0.5, 0.3) -> (0, 0.3); clipping its cells first would have given (0.5, 0.3).
    # a averages to (2, -0.3) -> (2, 0).
    assert np.allclose(profiles, [[0.0, 0.3], [2.0, 0.0]])
    assert share == 3 / 8 and (clipped_cells >= 0).all() and clipped_cells[0, 0] == 1.0
    assert message.startswith("model: 37.5% of the predicted cell values and 50.0% of the profiles' values")
    same, _, zero_share, no_message = baselines.profiles_from_predicted_cells(np.ones((2, 2)), ["a", "b"], ["a", "b"], "m",
                                                                              "log_normalized_cell_mean")
    assert zero_share == 0.0 and no_message is None and np.allclose(same, 1.0)


def _baselines():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "utils"))
    import baselines
    return baselines


def test_profile_of_cells_follows_the_datasets_normalisation():
    baselines = _baselines()
    # log_cp10k: back to cp10k (0, 2) and (4, 2), averaged (2, 2), logged again: log(3) twice
    cells = np.log1p(np.array([[0.0, 2.0], [4.0, 2.0]]))
    np.testing.assert_allclose(baselines.profile_of_cells(cells, "log_cp10k"), np.log([3.0, 3.0]))
    np.testing.assert_allclose(baselines.profile_of_cells(sp.csr_matrix(cells), "log_cp10k"), np.log([3.0, 3.0]))
    # *_cell_mean: the mean of the logs, (log(5)/2, log(3))
    np.testing.assert_allclose(baselines.profile_of_cells(cells, "log_cp10k_cell_mean"), [np.log(5) / 2, np.log(3)])
    with pytest.raises(baselines.InputError, match="'scran'.*known: 'log_cp10k'"):
        baselines.profile_of_cells(cells, "scran")


def test_profile_of_datlinger_cells_is_on_the_scale_of_its_profiles():
    """On the real Datlinger counts, each condition's cells (log1p cp10k per cell, as dataset_cells.h5ad holds
    them) made into a profile land on the loader's profile scale, log1p(cp10k of the summed counts); the mean
    of the cells' logs, which the cell models used to write, lies far below it."""
    baselines = _baselines()
    source = ad.read_h5ad(realdata.shared_file(realdata.DATLINGER))
    counts = sp.csr_matrix(source.X)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    cells = sp.diags(1e4 / totals) @ counts
    cells.data = np.log1p(cells.data)
    key = (source.obs["perturbation"].astype(str) + "|" + source.obs["perturbation_2"].astype(str)).to_numpy()
    made, mean_of_logs = [], []
    for condition in np.unique(key):
        rows = key == condition
        summed = np.asarray(counts[rows].sum(axis=0)).ravel()
        profile = np.log1p(summed / summed.sum() * 1e4)
        made.append(baselines.profile_of_cells(cells[rows], "log_cp10k") - profile)
        mean_of_logs.append(baselines.profile_of_cells(cells[rows], "log_cp10k_cell_mean") - profile)
    made, mean_of_logs = np.array(made), np.array(mean_of_logs)
    assert len(made) == 42
    # unweighted by library size (predicted cells have none), so noisy per gene but without bias
    assert np.abs(made.mean(axis=1)).max() < 0.05 and np.abs(made).mean() < 0.3
    assert mean_of_logs.mean(axis=1).max() < -0.5
