"""Distributional metrics (src/metrics/distribution_distance, src/utils/cell_distances.py) and the
controls' predicted cells.

The estimators are checked against values computed by hand on tiny 1-D and 2-D sets and against
scipy's energy distance; the PCA against numpy's SVD. On the real subsets (Norman 2019 from the
PerturBench devel file, Datlinger 2017) the cell files of the cells contract are built here from the
same cells and replicate halves as tests/realdata.py, the controls write their cells through the runner
and the metric must order them ground_truth < replicate_ceiling < no_change in energy distance and MMD,
with train_mean below no_change. The real-data tests skip when ../shared/data is absent.
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats

from perturbcast.runner import run_component

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "utils"))
import cell_distances as cd  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402

import realdata  # noqa: E402
from conftest import shared_file  # noqa: E402

METRIC = ROOT / "src" / "metrics" / "distribution_distance"
CONTROLS = ("ground_truth", "replicate_ceiling", "train_mean", "no_change")


# --------------------------------------------------------------------------------------------------
# Estimators on hand-made sets
# --------------------------------------------------------------------------------------------------

def test_energy_distance_1d_by_hand():
    # cross |0-3|, |1-3| -> mean 2.5; within X: |0-1| = 1; Y one cell -> 0: 2 * 2.5 - 1 - 0 = 4
    assert cd.energy_distance(np.array([[0.0], [1.0]]), np.array([[3.0]])) == pytest.approx(4.0, abs=1e-12)


def test_energy_distance_2d_by_hand_is_an_unbiased_u_statistic():
    X = np.array([[0.0, 0.0], [3.0, 4.0]])
    Y = np.array([[0.0, 0.0], [0.0, 4.0]])
    # cross 0, 4, 5, 3 -> 3; within X 5, within Y 4 (pairs of distinct cells): 6 - 5 - 4 = -3
    assert cd.energy_distance(X, Y) == pytest.approx(-3.0, abs=1e-12)
    assert cd.energy_distance(Y, X) == pytest.approx(-3.0, abs=1e-12)
    # the V-statistic (diagonal zeros in the within means) would be 6 - 2.5 - 2 = 1.5


def test_energy_distance_of_a_set_with_itself_is_minus_twice_its_mean_distance_over_n():
    X = np.array([[0.0], [1.0], [3.0]])  # distinct-pair distances 1, 3, 2 -> mean 2
    # cross mean over 9 pairs = (0+1+3 + 1+0+2 + 3+2+0) / 9 = 12 / 9; E = 24/9 - 2 - 2 = -12/9
    assert cd.energy_distance(X, X) == pytest.approx(-12.0 / 9.0, abs=1e-12)
    assert cd.energy_distance(X, X) == pytest.approx(-2.0 * 2.0 / 3.0, abs=1e-12)


def test_energy_distance_matches_scipy_after_the_v_statistic_correction():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 40), rng.normal(0.7, 1.5, 25)
    within = lambda v: np.abs(v[:, None] - v[None, :]).sum() / (len(v) * (len(v) - 1))  # noqa: E731
    u = cd.energy_distance(x[:, None], y[:, None])
    # V = U + within_X / n + within_Y / m; scipy returns sqrt of the V-statistic (1-D, CDF form)
    v = u + within(x) / len(x) + within(y) / len(y)
    assert np.sqrt(v) == pytest.approx(scipy.stats.energy_distance(x, y), rel=1e-10)


def test_mmd_1d_and_2d_by_hand():
    X, Y = np.array([[0.0], [1.0]]), np.array([[3.0]])
    # k(0,1) = e^-0.5 (h = 1); Y one cell -> 1; cross e^-4.5, e^-2
    expected = np.exp(-0.5) + 1.0 - (np.exp(-4.5) + np.exp(-2.0))
    assert cd.mmd2(X, Y, 1.0) == pytest.approx(expected, abs=1e-12)
    X2 = np.array([[0.0, 0.0], [3.0, 4.0]])
    Y2 = np.array([[0.0, 0.0], [0.0, 4.0]])
    h = 2.0  # exp(-d^2 / 8): within X d=5, within Y d=4, cross d = 0, 4, 5, 3
    expected = np.exp(-25 / 8) + np.exp(-16 / 8) - 2 * (1 + np.exp(-16 / 8) + np.exp(-25 / 8) + np.exp(-9 / 8)) / 4
    assert cd.mmd2(X2, Y2, h) == pytest.approx(expected, abs=1e-12)
    assert cd.mmd2(Y2, X2, h) == pytest.approx(expected, abs=1e-12)


def test_estimators_separate_shifted_from_equal_distributions():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(0, 1, (300, 3)), rng.normal(0, 1, (300, 3)), rng.normal(0, 1, (300, 3)) + [1.0, 0, 0]
    h = cd.median_bandwidth(a)
    assert abs(cd.energy_distance(a, b)) < 0.05 < cd.energy_distance(a, c)
    assert abs(cd.mmd2(a, b, h)) < 0.01 < cd.mmd2(a, c, h)


def test_set_distances_give_both_statistics_bit_for_bit_with_or_without_the_observed_terms():
    rng = np.random.default_rng(4)
    X, Y, h = rng.normal(0, 1, (40, 5)), rng.normal(0.3, 1, (25, 5)), 1.7
    both = cd.set_distances(X, Y, h)
    assert both == (cd.energy_distance(X, Y), cd.mmd2(X, Y, h))
    assert cd.set_distances(X, Y, h, cd.within_terms(Y, h)) == both
    single = cd.set_distances(X[:1], Y, h)  # a one-cell set is a point mass (its own terms 0 and 1)
    assert single == (cd.energy_distance(X[:1], Y), cd.mmd2(X[:1], Y, h))


def test_observed_sets_are_projected_once_per_axes_and_file(tmp_path, monkeypatch):
    """A fold's observed cells meet every prediction: within the current training axes they are read and
    projected once per process; other axes (another fold) project them again."""
    from formats import read_h5ad_lazy

    A = sp.random(120, 30, density=0.4, random_state=5, format="csr", dtype=np.float32)
    ad.AnnData(X=A).write_h5ad(tmp_path / "train.h5ad")
    ad.AnnData(X=A[:60]).write_h5ad(tmp_path / "observed.h5ad")
    train, observed = read_h5ad_lazy(str(tmp_path / "train.h5ad")), read_h5ad_lazy(str(tmp_path / "observed.h5ad"))
    pca, h = cd.training_axes(train, seed=0)
    reads = []
    original = cd.cell_rows
    monkeypatch.setattr(cd, "cell_rows", lambda cells, rows: reads.append(len(rows)) or original(cells, rows))
    rows, drop = np.arange(5, 25), np.array([3])
    first = cd.projected_set(pca, observed, rows, drop, h)
    again = cd.projected_set(pca, observed, rows, drop, h)
    assert reads == [20] and again is first
    Z = pca.project(A[5:25], drop)
    assert np.array_equal(first[0], Z) and first[1] == cd.within_terms(Z, h)
    cd.projected_set(pca, observed, rows, np.array([4]), h)  # other genes left out: projected anew
    other = cd.fit_pca(A, seed=1, n_components=3)  # not the current axes: not kept
    cd.projected_set(other, observed, rows, drop, h)
    cd.projected_set(other, observed, rows, drop, h)
    assert reads == [20, 20, 20, 20]


def test_median_bandwidth_by_hand():
    Z = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # distances 5, 4, 3
    assert cd.median_bandwidth(Z) == pytest.approx(4.0)


def test_pca_matches_numpy_and_dropping_genes_equals_a_constant_value():
    A = sp.random(200, 30, density=0.3, random_state=1, format="csr", dtype=np.float64)
    pca = cd.fit_pca(A, n_components=6)
    dense = A.toarray()
    _, s, vt = np.linalg.svd(dense - dense.mean(axis=0), full_matrices=False)
    assert np.allclose(pca.explained, s[:6] ** 2 / 199)
    assert np.allclose(np.abs(pca.components), np.abs(vt[:6].T))
    constant = dense.copy()
    constant[:, [2, 7]] = 5.0  # any one value per dropped gene: the shift cancels in distances
    Z1, Z2 = pca.project(A, drop=[2, 7]), pca.project(constant)
    d1, d2 = cd.pairwise_sq_distances(Z1, Z1), cd.pairwise_sq_distances(Z2, Z2)
    assert np.allclose(d1, d2)


def test_subsample_is_seeded_by_key_and_capped():
    a = cd.subsample(1000, 10, 0, "G1|K562|none|0")
    assert len(a) == 10 and np.array_equal(a, cd.subsample(1000, 10, 0, "G1|K562|none|0"))
    assert not np.array_equal(a, cd.subsample(1000, 10, 0, "G2|K562|none|0"))
    assert np.array_equal(cd.subsample(7, 10, 0, "x"), np.arange(7))



def test_the_pca_of_the_sampled_rows_read_from_disk_is_the_pca_of_all_cells(tmp_path):
    """The script reads only the rows fit_pca would draw (formats.LazyAnnData): given just them, fit_pca keeps
    all of them, so the axes are bitwise those of the PCA of every training cell."""
    from formats import read_h5ad_lazy

    A = sp.random(300, 40, density=0.3, random_state=2, format="csr", dtype=np.float32)
    ad.AnnData(X=A).write_h5ad(tmp_path / "cells.h5ad")
    lazy = read_h5ad_lazy(str(tmp_path / "cells.h5ad"))
    rows = cd.subsample(lazy.n_obs, 50, 3, "pca")
    full, sampled = cd.fit_pca(A, seed=3, max_cells=50), cd.fit_pca(lazy.rows(rows), seed=3, max_cells=50)
    assert np.array_equal(full.components, sampled.components) and np.array_equal(full.mean, sampled.mean)
    shuffled = np.array([250, 3, 120, 4])  # any order, as in memory
    assert (lazy.rows(shuffled) != A[shuffled]).nnz == 0

# --------------------------------------------------------------------------------------------------
# Cell files of a real subset, built per notes/CELLS_CONTRACT.md from the cells behind realdata's profiles
# --------------------------------------------------------------------------------------------------

def synthetic_cells(seed: int = 0):
    """Cells of 6 perturbations (40 cells, target genes G1..G6 among the 20 genes, with effects) and 80
    controls, and their common dataset pseudobulked by realdata.pseudobulk."""
    rng = np.random.default_rng(seed)
    labels = ["control"] * 80 + [f"G{k}" for k in range(1, 7) for _ in range(40)]
    X = rng.gamma(2.0, 0.5, (len(labels), 20))
    for k in range(1, 7):
        rows = [i for i, label in enumerate(labels) if label == f"G{k}"]
        X[np.ix_(rows, [k - 1, 10 + k])] += [3.0, 0.4 * k]
    var_names = [f"G{j}" for j in range(1, 21)]
    common = realdata.pseudobulk(X, labels, ["knockout"] * len(labels), ["T"] * len(labels), ["none"] * len(labels),
                                 var_names, uns={"dataset_id": "synthetic_cells", "normalization_id": "log1p"})
    obs = pd.DataFrame({"perturbation": labels, "perturbation_type": "knockout", "cell_type": "T", "condition": "none"})
    return sp.csr_matrix(X, dtype=np.float32), obs, common


def test_controls_read_the_training_cells_from_disk_as_from_memory(tmp_path, monkeypatch):
    """train_mean's shifts summed block by block (cells on disk, formats.LazyAnnData) are the in-memory sums, and
    the drawn control cells are the same cells, shifted the same way."""
    from formats import read_h5ad_lazy

    X, obs, common = synthetic_cells()
    obs = obs.assign(is_control=obs["perturbation"] == "control")
    obs.index = [f"c{i}" for i in range(len(obs))]
    cells = ad.AnnData(X=X, obs=obs)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    monkeypatch.setattr(cd, "SUM_BLOCK_ROWS", 37)  # 320 cells in 9 blocks
    lazy = read_h5ad_lazy(str(tmp_path / "cells.h5ad"))
    contexts = [("T", "none")]
    (in_memory, _), (on_disk, _) = cd.mean_cell_shifts(cells, contexts), cd.mean_cell_shifts(lazy, contexts)
    assert np.allclose(in_memory[contexts[0]], on_disk[contexts[0]], rtol=0, atol=1e-12)
    test = ad.AnnData(obs=pd.DataFrame({"cell_type": "T", "condition": "none"}, index=["G7", "G8"]))
    for shifts in (None, in_memory):
        (a, ids_a, _), (b, ids_b, _) = (cd.shifted_control_cells(c, test, shifts, cap=30) for c in (cells, lazy))
        assert ids_a == ids_b and len(ids_a) == 60
        assert np.array_equal(a.toarray() if sp.issparse(a) else a, b.toarray() if sp.issparse(b) else b)

def cell_table(name: str):
    """(log-normalised cells CSR, obs with the contract's labels and the replicate of realdata's halves)."""
    if name == "synthetic":
        X, obs, common = synthetic_cells()
    elif name == "norman":
        cells = ad.read_h5ad(shared_file(realdata.DEVEL))
        cells = cells[(cells.obs["dataset"] == "norman19").to_numpy()]
        X = sp.csr_matrix(cells.X, dtype=np.float32)
        obs = pd.DataFrame({"perturbation": [realdata.harmonise_perturbation(c) for c in cells.obs["condition"].astype(str)],
                            "perturbation_type": "activation", "cell_type": "K562", "condition": "none"})
        common = realdata.norman19_common()
    else:
        cells = ad.read_h5ad(shared_file(realdata.DATLINGER))
        counts = sp.csr_matrix(cells.X, dtype=np.float64)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        X = sp.diags(1e4 / np.maximum(totals, 1.0)) @ counts
        X.data = np.log1p(X.data)
        X = sp.csr_matrix(X, dtype=np.float32)
        obs = pd.DataFrame({"perturbation": [realdata.harmonise_perturbation(p) for p in cells.obs["perturbation"].astype(str)],
                            "perturbation_type": "knockout", "cell_type": "Jurkat",
                            "condition": cells.obs["perturbation_2"].astype(str).to_numpy()})
        common = realdata.datlinger2017_common()
    # the replicate halves of realdata.pseudobulk: a seeded permutation per group, first half r1
    replicate = np.empty(len(obs), dtype=object)
    keys = ["perturbation", "cell_type", "condition", "perturbation_type"]
    for key, rows in sorted(obs.groupby(keys, sort=True).indices.items()):
        order = np.random.default_rng([0, zlib.crc32("|".join(key).encode())]).permutation(np.sort(rows))
        replicate[order[: len(order) // 2]] = "r1"
        replicate[order[len(order) // 2:]] = "r2"
    obs["replicate"] = replicate
    obs["is_control"] = obs["perturbation"] == "control"
    obs.index = pd.Index([f"cell{i}" for i in range(len(obs))], dtype=object)
    return X, obs, common


def write_split(name: str, task: str, work: Path) -> dict[str, Path]:
    """train, test, solution (fold 0 of 2) and the contract's train_cells / solution_cells, as files."""
    X, obs, common = cell_table(name)
    fold_function = partitions.combination_fold if task == "unseen_combination" else partitions.perturbation_fold
    is_test, stratum, exclude, info = fold_function(common.obs, 2, 0, 0)
    train, test, solution = splits.build_split(common, is_test, stratum, task, 0, exclude=exclude, n_folds=2, fold=0)
    # the profiles the cells were summed into, and which side of the split each profile went to
    recomputed = np.vstack([np.asarray(X[(obs[["perturbation", "cell_type", "condition", "perturbation_type",
                                                "replicate"]] == tuple(r)).all(axis=1).to_numpy()].mean(axis=0))
                            for r in common.obs[["perturbation", "cell_type", "condition", "perturbation_type",
                                                 "replicate"]].itertuples(index=False)])
    assert np.allclose(recomputed, common.X, atol=1e-5), "cells do not sum to realdata's profiles"
    key = obs[["perturbation", "cell_type", "condition", "perturbation_type"]].astype(str).agg("|".join, axis=1)
    train_keys = set(train.obs[["perturbation", "cell_type", "condition", "perturbation_type"]].astype(str)
                     .agg("|".join, axis=1))
    test_id = dict(zip(solution.obs[["perturbation", "cell_type", "condition", "perturbation_type"]].astype(str)
                       .agg("|".join, axis=1), solution.obs_names))
    var = pd.DataFrame(index=pd.Index(train.var_names.astype(str), dtype=object))
    in_train = key.isin(train_keys).to_numpy()
    in_test = key.isin(test_id).to_numpy()
    train_cells = ad.AnnData(X=X[in_train], obs=obs[in_train].copy(), var=var.copy(), uns=dict(train.uns))
    solution_obs = obs[in_test].copy()
    solution_obs["condition_id"] = key[in_test].map(test_id).to_numpy()
    solution_obs["replicate_half"] = solution_obs["replicate"].map({"r1": 1, "r2": 2}).astype(np.int64)
    solution_cells = ad.AnnData(X=X[in_test], obs=solution_obs, var=var.copy(), uns=dict(solution.uns))
    paths = {}
    for label, adata in (("train", train), ("test", test), ("solution", solution), ("train_cells", train_cells),
                         ("solution_cells", solution_cells)):
        paths[label] = work / f"{label}.h5ad"
        adata.write_h5ad(paths[label])
    return paths


def run(component: Path, args: dict) -> int:
    argv = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    return run_component(component, argv).exit_code


def score_controls(name: str, task: str, work: Path) -> pd.DataFrame:
    paths = write_split(name, task, work)
    rows = {}
    for control in CONTROLS:
        prediction, cells = work / f"{control}.h5ad", work / f"{control}_cells.h5ad"
        cell_input = "input_solution_cells" if control in ("ground_truth", "replicate_ceiling") else "input_train_cells"
        assert run(ROOT / "src" / "control_methods" / control, {
            "input_train": paths["train"], "input_test": paths["test"], "input_solution": paths["solution"],
            cell_input: paths[cell_input.removeprefix("input_")], "output": prediction, "output_cells": cells}) == 0
        score = work / f"score_{control}.h5ad"
        assert run(METRIC, {"input_solution": paths["solution"], "input_prediction": prediction,
                            "input_prediction_cells": cells, "input_solution_cells": paths["solution_cells"],
                            "input_train_cells": paths["train_cells"], "output": score}) == 0
        result = ad.read_h5ad(score)
        rows[control] = dict(zip(result.uns["metric_ids"], result.uns["metric_values"]))
        rows[control]["n_conditions"] = result.n_obs
    table = pd.DataFrame(rows).T
    print(f"\n{name} / {task}:\n{table.to_string()}")
    return table


@pytest.mark.parametrize("name,task", [("norman", "unseen_combination"), ("datlinger", "unseen_perturbation")])
def test_controls_are_ordered_on_real_cells(name, task, tmp_path):
    table = score_controls(name, task, tmp_path)
    e = table["energy_distance"]
    assert e["ground_truth"] < e["replicate_ceiling"] < e["no_change"], table
    # measured: the mean training shift brings the control cells closer (Norman 1.09 -> 0.98, Datlinger 0.18 -> 0.005)
    assert e["train_mean"] < e["no_change"], table
    m = table["mmd2_rbf"]
    assert m["ground_truth"] < m["replicate_ceiling"] < m["no_change"], table


# --------------------------------------------------------------------------------------------------
# The metric's contract on a small synthetic split
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    work = tmp_path_factory.mktemp("synthetic")
    paths = write_split("synthetic", "unseen_perturbation", work)
    paths["prediction"] = work / "prediction.h5ad"
    assert run(ROOT / "src" / "control_methods" / "ground_truth", {
        "input_train": paths["train"], "input_test": paths["test"], "input_solution": paths["solution"],
        "input_solution_cells": paths["solution_cells"], "output": paths["prediction"],
        "output_cells": work / "ground_truth_cells.h5ad"}) == 0
    paths["cells"] = work / "ground_truth_cells.h5ad"
    return work, paths


def metric_args(paths, cells, output) -> dict:
    return {"input_solution": paths["solution"], "input_prediction": paths["prediction"],
            "input_prediction_cells": cells, "input_solution_cells": paths["solution_cells"],
            "input_train_cells": paths["train_cells"], "output": output}


def test_not_applicable_without_predicted_cells(synthetic):
    work, paths = synthetic
    args = metric_args(paths, paths["cells"], work / "none.h5ad")
    del args["input_prediction_cells"]
    assert run(METRIC, args) == 99
    assert not (work / "none.h5ad").exists()


def test_a_missing_condition_is_a_one_line_error_and_nothing_is_written(synthetic, capfd):
    work, paths = synthetic
    cells = ad.read_h5ad(paths["cells"])
    first = str(cells.obs["condition_id"].iloc[0])
    cells[(cells.obs["condition_id"].astype(str) != first).to_numpy()].copy().write_h5ad(work / "short.h5ad")
    assert run(METRIC, metric_args(paths, work / "short.h5ad", work / "short_score.h5ad")) == 1
    err = capfd.readouterr().err
    assert "[error] --input_prediction_cells" in err and "no cell for 1 test conditions" in err
    assert not (work / "short_score.h5ad").exists()


def test_cells_marked_with_a_half_are_scored_against_the_other_half_only(synthetic):
    work, paths = synthetic
    solution, observed = ad.read_h5ad(paths["solution"]), ad.read_h5ad(paths["solution_cells"])
    train_cells = ad.read_h5ad(paths["train_cells"])
    half2 = observed[(observed.obs["replicate_half"] == 2).to_numpy()].copy()
    marked = ad.AnnData(X=half2.X, obs=pd.DataFrame({"condition_id": half2.obs["condition_id"].astype(str).to_numpy(),
                                                     "replicate_half": np.ones(half2.n_obs, dtype=np.int64)},
                                                    index=half2.obs_names),
                        var=half2.var, uns={"dataset_id": solution.uns["dataset_id"], "task_id": solution.uns["task_id"],
                                            "method_id": "half2_as_half1"})
    marked.write_h5ad(work / "marked.h5ad")
    unmarked = marked.copy()
    del unmarked.obs["replicate_half"]
    unmarked.write_h5ad(work / "unmarked.h5ad")
    for label in ("marked", "unmarked"):
        assert run(METRIC, metric_args(paths, work / f"{label}.h5ad", work / f"score_{label}.h5ad")) == 0
    scored = {label: ad.read_h5ad(work / f"score_{label}.h5ad").obs for label in ("marked", "unmarked")}
    pca = cd.fit_pca(train_cells.X, seed=0)
    for name, perturbation in zip(solution.obs_names, solution.obs["perturbation"]):
        drop = [list(solution.var_names).index(perturbation)]  # G1..G6 are genes: the target is left out
        cells = observed.obs["condition_id"].astype(str).to_numpy() == name
        Z2 = pca.project(observed.X[cells & (observed.obs["replicate_half"] == 2).to_numpy()], drop)
        Zall = pca.project(observed.X[cells], drop)
        # marked half-1 cells meet the half-2 cells: here the very same cells, so E = E_U(Z2, Z2) < 0
        assert scored["marked"].loc[name, "energy_distance"] == pytest.approx(cd.energy_distance(Z2, Z2), rel=1e-6)
        assert scored["marked"].loc[name, "energy_distance"] < 0
        assert scored["unmarked"].loc[name, "energy_distance"] == pytest.approx(cd.energy_distance(Z2, Zall), rel=1e-6)


def test_a_control_asked_for_cells_without_cell_inputs_writes_its_profiles_only(synthetic):
    work, paths = synthetic
    assert run(ROOT / "src" / "control_methods" / "no_change", {
        "input_train": paths["train"], "input_test": paths["test"], "input_solution": paths["solution"],
        "output": work / "nc.h5ad", "output_cells": work / "nc_cells.h5ad"}) == 0
    assert (work / "nc.h5ad").exists() and not (work / "nc_cells.h5ad").exists()


def test_train_mean_cells_are_the_control_cells_shifted_by_the_mean_training_delta(synthetic):
    work, paths = synthetic
    assert run(ROOT / "src" / "control_methods" / "train_mean", {
        "input_train": paths["train"], "input_test": paths["test"], "input_solution": paths["solution"],
        "input_train_cells": paths["train_cells"], "output": work / "tm.h5ad", "output_cells": work / "tm_cells.h5ad"}) == 0
    assert run(ROOT / "src" / "control_methods" / "no_change", {
        "input_train": paths["train"], "input_test": paths["test"], "input_solution": paths["solution"],
        "input_train_cells": paths["train_cells"], "output": work / "nc.h5ad", "output_cells": work / "nc_cells.h5ad"}) == 0
    cells, prediction = ad.read_h5ad(paths["train_cells"]), ad.read_h5ad(work / "tm.h5ad")
    shifted, plain = ad.read_h5ad(work / "tm_cells.h5ad"), ad.read_h5ad(work / "nc_cells.h5ad")
    # by hand, one context: each training condition's mean cell minus the mean control cell, averaged
    X = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    is_control = cells.obs["is_control"].to_numpy().astype(bool)
    labels = cells.obs["perturbation"].astype(str).to_numpy()
    conditions = sorted(set(labels[~is_control]))
    expected = np.mean([X[labels == c].mean(axis=0) for c in conditions], axis=0) - X[is_control].mean(axis=0)
    assert len(conditions) == 3 and np.abs(expected).max() > 0.01
    # as many cells as a measured training condition has (the median), drawn from the 80 control cells
    typical = int(np.ceil(np.median([(labels == c).sum() for c in conditions])))
    assert is_control.sum() == 80 and typical == 40
    for name in prediction.obs_names:
        rows = (shifted.obs["condition_id"].astype(str) == name).to_numpy()
        assert rows.sum() == typical
        delta = np.asarray(shifted.X[rows]) - plain.X[(plain.obs["condition_id"].astype(str) == name).to_numpy()].toarray()
        assert np.allclose(delta, expected, atol=1e-5)  # one shift for every cell


def test_it_shares_the_python_metrics_image_and_so_their_session():
    """Its PCA and bandwidth are fitted once per fold and worker session (cell_distances.training_axes): a
    metric with another image is scored in a unit of its own (steps.score_units), outside that session, and
    refits them for every prediction (at genome scale, most of its time)."""
    from perturbcast.config import load_config
    from perturbcast.steps import image_key

    root = Path(__file__).resolve().parent.parent / "src" / "metrics"
    keys = {name: image_key(load_config(root / name / "config.vsh.yaml"))
            for name in ("distribution_distance", "delta_error", "delta_correlation", "discrimination")}
    assert len(set(keys.values())) == 1, keys
