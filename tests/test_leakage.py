"""Tests of the leakage checker `perturbcast.leakage` (check_split and the `check-split` command).

Clean splits of every task give no problem; deliberately leaky ones (a test profile copied into training,
a held-out gene's perturbation in training, expression left in the test file, ...) are caught.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import event, given, settings
from hypothesis import strategies as st

from perturbcast import leakage
from perturbcast.leakage import check_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "utils"))
import partitions  # noqa: E402
import splits  # noqa: E402

import realdata  # noqa: E402
from test_tasks import common_datasets, make_common  # noqa: E402

CONTEXTS = [("K562", "none"), ("RPE1", "none")]
PERTURBATIONS = {p: CONTEXTS for p in ["A", "B", "C", "D", "E", "F", "G", "H", "A+B", "C+D", "E+X", "F+G", "X+Y"]}


FOLD_FUNCTIONS = {"unseen_perturbation": partitions.perturbation_fold, "unseen_combination": partitions.combination_fold,
                  "cell_type_transfer": partitions.transfer_fold}


def split_of(task: str, common, seed: int = 0, n_folds: int = 5, fold: int = 0):
    """Train, test, solution of fold `fold` of `task` made in process, as the task's script does."""
    is_test, stratum, exclude, info = FOLD_FUNCTIONS[task](common.obs, n_folds, fold, seed)
    extra = {key: info[key] for key in ("held_out_targets", "held_out_singles", "heldout_contexts") if key in info}
    return splits.build_split(common, is_test, stratum, task, seed, exclude=exclude, n_folds=n_folds, fold=fold,
                              extra_uns={"n_partition_conditions": info["n_partition_conditions"]},
                              extra_solution_uns=extra)


def restat(train):
    """Training data with its gene statistics recomputed, so that only an injected leak remains."""
    train.var["mean_expression"] = np.asarray(train.X.mean(axis=0), dtype=np.float64).ravel()
    train.var["highly_variable_rank"] = splits.variability_rank(train.X)
    return train


TASKS = ["unseen_perturbation", "unseen_combination", "cell_type_transfer"]


@pytest.fixture(scope="module")
def common():
    return make_common(PERTURBATIONS, CONTEXTS, seed=7)


def add_train_row(train, perturbation, cell_type, condition, profile, name="injected"):
    """Training data with one more row (mean_expression recomputed, so only the injected leak remains)."""
    import anndata as ad

    obs = pd.DataFrame({"perturbation": [perturbation], "is_control": [perturbation == "control"],
                        "perturbation_type": [str(train.obs["perturbation_type"].iloc[0])],
                        "n_targets": [0 if perturbation == "control" else len(perturbation.split("+"))],
                        "cell_type": [cell_type], "condition": [condition], "replicate": ["r1"], "n_cells": [10]},
                       index=[name])
    row = ad.AnnData(X=np.asarray(profile, dtype=np.float32).reshape(1, -1), obs=obs, var=train.var.copy())
    base = ad.AnnData(X=train.X.toarray() if sp.issparse(train.X) else np.asarray(train.X), obs=train.obs.astype({c: str for c in ("perturbation", "cell_type", "condition",
                                                                         "perturbation_type", "replicate")}),
                      var=train.var.copy(), uns=dict(train.uns))
    out = ad.concat([base, row], merge="same", uns_merge="first")
    out.var = train.var.copy()
    out.var["mean_expression"] = np.asarray(out.X, dtype=np.float64).mean(axis=0)
    return out  # highly_variable_rank is left as made for the split: test / solution carry the same


def has(problems, text):
    return any(text in p for p in problems)


# --------------------------------------------------------------------------------------------------
# clean splits
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_clean_splits_have_no_problem(task, common, tmp_path):
    train, test, solution = split_of(task, common)
    assert check_split(train, test, solution) == []
    assert check_split(train, test, solution, common_path=common) == []
    for name, adata in zip(("train", "test", "solution"), (train, test, solution)):
        adata.write_h5ad(tmp_path / f"{name}.h5ad")
    common.write_h5ad(tmp_path / "common.h5ad")
    paths = [str(tmp_path / f"{n}.h5ad") for n in ("train", "test", "solution")]
    assert check_split(*paths, task_id=task, common_path=tmp_path / "common.h5ad") == []


# --------------------------------------------------------------------------------------------------
# deliberately leaky splits
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_a_test_profile_copied_into_training_is_caught(task, common):
    train, test, solution = split_of(task, common)
    # under another label, so only the content check can see it
    leaky = add_train_row(train, "control", "K562", "none", solution.layers["replicate_2"][0])
    problems = check_split(leaky, test, solution)
    assert has(problems, "have their profile in training") and has(problems, solution.obs_names[0]), problems
    # a value rounded through float64 is still a copy
    leaky = add_train_row(train, "control", "K562", "none", solution.X[0].astype(np.float64) + 1e-7)
    assert has(check_split(leaky, test, solution), "have their profile in training")


@pytest.mark.parametrize("task", TASKS)
def test_a_training_row_of_a_test_condition_is_caught(task, common):
    train, test, solution = split_of(task, common)
    row = test.obs.iloc[0]
    leaky = add_train_row(train, row["perturbation"], row["cell_type"], row["condition"],
                          np.random.default_rng(0).random(train.n_vars))
    assert has(check_split(leaky, test, solution), "held-out conditions have rows in training")


def test_a_held_out_genes_perturbation_in_training_is_caught(common):
    train, test, solution = split_of("unseen_perturbation", common)
    gene = list(solution.uns["held_out_targets"])[0]
    partner = next(g for g in "ABCDEFGH" if g not in solution.uns["held_out_targets"])
    combination = "+".join(sorted([gene, partner]))
    # in a context where it is not tested, with a fresh profile: only the task check can see it
    leaky = restat(add_train_row(train, combination, "HeLa", "none", np.random.default_rng(1).random(train.n_vars)))
    restated = [adata.copy() for adata in (test, solution)]
    for adata in restated:
        adata.var["highly_variable_rank"] = leaky.var["highly_variable_rank"].to_numpy()
    problems = check_split(leaky, *restated)
    assert problems and all("target a held-out gene" in p for p in problems), problems
    # without uns['held_out_targets'], the targets of single test rows stand in for it
    del solution.uns["held_out_targets"]
    assert check_split(train, test, solution) == []
    problems = check_split(leaky, test, solution)
    assert has(problems, "are perturbed in training") or has(problems, "are also in training"), problems


def test_expression_left_in_the_test_file_is_caught(common):
    train, test, solution = split_of("unseen_perturbation", common)
    leaky = test.copy()
    leaky.X = sp.csr_matrix(solution.X)
    assert has(check_split(train, leaky, solution), "nonzero values")
    leaky = test.copy()
    leaky.layers["replicate_1"] = solution.layers["replicate_1"]
    assert has(check_split(train, leaky, solution), "layers 'replicate_1' present")
    leaky = test.copy()
    leaky.obs["n_cells"] = solution.obs["n_cells"]
    assert has(check_split(train, leaky, solution), "obs columns 'n_cells' are not allowed")
    leaky = test.copy()
    leaky.var["mean_expression"] = 1.0
    assert has(check_split(train, leaky, solution), "var columns 'mean_expression'")


def test_training_statistics_over_held_out_profiles_are_caught(common):
    train, test, solution = split_of("unseen_combination", common)
    train.var["mean_expression"] = common.var["mean_expression"].to_numpy()
    assert has(check_split(train, test, solution), "var['mean_expression'] is not the mean of the training profiles")


def test_held_out_combination_in_training_and_wrong_strata_are_caught(common):
    # 5 combinations in 2 folds: each fold withholds singles to reach more strata
    train, test, solution = split_of("unseen_combination", common, n_folds=2)
    row = test.obs.iloc[0]
    other = next(c for c in ("K562", "RPE1", "HeLa") if c != row["cell_type"])
    leaky = add_train_row(train, row["perturbation"], other, row["condition"],
                          np.random.default_rng(2).random(train.n_vars))
    assert has(check_split(leaky, test, solution), "held-out combinations")
    relabelled = test.copy()
    relabelled.obs["stratum"] = relabelled.obs["stratum"].astype(str)
    relabelled.obs.iloc[0, relabelled.obs.columns.get_loc("stratum")] = "combo_seen7"
    assert has(check_split(train, relabelled, solution), "strata disagree")
    # a withheld single back in training
    held = list(solution.uns["held_out_singles"])
    assert held
    leaky = add_train_row(train, held[0], "HeLa", "none", np.random.default_rng(3).random(train.n_vars))
    problems = check_split(leaky, test, solution)
    assert has(problems, "withheld single") and has(problems, "strata disagree"), problems


def test_transfer_perturbation_not_observed_elsewhere_is_caught(common):
    train, test, solution = split_of("cell_type_transfer", common)
    perturbation = test.obs["perturbation"].iloc[0]
    keep = (train.obs["perturbation"] != perturbation).to_numpy()
    thinned = restat(train[keep].copy())
    assert has(check_split(thinned, test, solution), "not observed in another context")


def test_missing_controls_and_misaligned_files_are_caught(common):
    train, test, solution = split_of("cell_type_transfer", common)
    keep = np.ones(train.n_obs, dtype=bool)
    keep[np.flatnonzero(train.obs["is_control"].to_numpy())[0]] = False
    thinned = restat(train[keep].copy())
    for adata in (test, solution):
        adata.var["highly_variable_rank"] = thinned.var["highly_variable_rank"].to_numpy()
    assert check_split(thinned, test, solution) == []
    assert has(check_split(thinned, test, solution, common_path=common), "control profiles of the common dataset")
    assert has(check_split(train, test[::-1].copy(), solution), "obs_names are not identical")
    other = solution.copy()
    other.uns["split_seed"] = 5
    assert has(check_split(train, test, other), "uns['split_seed'] differs")


# --------------------------------------------------------------------------------------------------
# property-based: clean splits are clean, injected leaks are caught
# --------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(common=common_datasets(), task=st.sampled_from(TASKS), seed=st.integers(0, 100), data=st.data())
def test_random_splits_are_clean_and_injected_leaks_are_caught(common, task, seed, data):
    try:
        train, test, solution = split_of(task, common, seed)
    except splits.SplitNotApplicable:
        event(f"{task}: not applicable")
        return
    event(f"{task}: checked")
    assert check_split(train, test, solution, common_path=common) == []
    k = data.draw(st.integers(0, test.n_obs - 1))
    slot = data.draw(st.sampled_from(["X", "replicate_1", "replicate_2"]))
    profile = solution.X[k] if slot == "X" else solution.layers[slot][k]
    if np.any(profile):
        leaky = add_train_row(train, "control", str(test.obs["cell_type"].iloc[k]), str(test.obs["condition"].iloc[k]),
                              profile)
        assert has(check_split(leaky, test, solution), "have their profile in training")
    leaky = test.copy()
    leaky.X = sp.csr_matrix(([1.0], ([k], [data.draw(st.integers(0, test.n_vars - 1))])), shape=test.shape)
    assert has(check_split(train, leaky, solution), "nonzero values")


# --------------------------------------------------------------------------------------------------
# real data and the command line
# --------------------------------------------------------------------------------------------------

def test_norman19_unseen_perturbation_split_is_clean_and_a_leak_is_caught():
    common = realdata.norman19_common()
    for seed in range(3):
        train, test, solution = split_of("unseen_perturbation", common, seed)
        assert check_split(train, test, solution, common_path=common) == []
    leaky = add_train_row(train, "control", "K562", "none", solution.layers["replicate_1"][-1])
    assert has(check_split(leaky, test, solution), "have their profile in training")


def write_split(directory: Path, train, test, solution) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, adata in zip(("train", "test", "solution"), (train, test, solution)):
        adata.write_h5ad(directory / f"{name}.h5ad")
    return directory


def test_command_line(common, tmp_path, capsys):
    train, test, solution = split_of("unseen_combination", common)
    clean = write_split(tmp_path / "clean", train, test, solution)
    common.write_h5ad(tmp_path / "common.h5ad")
    assert leakage.main([str(clean), "--common", str(tmp_path / "common.h5ad")]) == 0
    assert "no leakage found" in capsys.readouterr().out
    files = [str(clean / f"{n}.h5ad") for n in ("train", "test", "solution")]
    assert leakage.main(files + ["--task_id", "unseen_combination"]) == 0
    leaky_test = test.copy()
    leaky_test.X = sp.csr_matrix(solution.X)
    leaky = write_split(tmp_path / "leaky", train, leaky_test, solution)
    capsys.readouterr()
    assert leakage.main([str(leaky)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out and all(line.startswith("[leak] ") for line in out) and "nonzero values" in out[0]
    assert leakage.main([str(clean), str(clean)]) == 2
    assert leakage.main([str(tmp_path / "absent")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "partial").mkdir()
    assert leakage.main([str(tmp_path / "partial")]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert leakage.main(["--help"]) == 0


# --------------------------------------------------------------------------------------------------
# folds: gene ranks from training rows, fold labels, complete partitions
# --------------------------------------------------------------------------------------------------

def test_gene_ranks_over_held_out_profiles_and_fold_mismatch_are_caught(common):
    train, test, solution = split_of("unseen_perturbation", common)
    assert check_split(train, test, solution) == []
    everything = common.var["highly_variable_rank"].to_numpy()  # ranked over all rows, test rows included
    assert not np.array_equal(everything, train.var["highly_variable_rank"].to_numpy())
    for adata in (train, test, solution):
        adata.var["highly_variable_rank"] = everything
    assert has(check_split(train, test, solution), "does not follow the variance of the training profiles")
    train, test, solution = split_of("unseen_perturbation", common)
    solution.uns["fold"] = 1
    assert has(check_split(train, test, solution), "uns['fold'] differs")


def partition_of(task, common, n_folds=3, seed=0):
    return [split_of(task, common, seed, n_folds, fold)[1] for fold in range(n_folds)]


@pytest.mark.parametrize("task", TASKS)
def test_a_complete_partition_is_clean_and_gaps_or_repeats_are_caught(task, common, tmp_path):
    tests = partition_of(task, common)
    assert leakage.check_partition(tests, common_path=common) == []
    assert has(leakage.check_partition(tests[:2]), "folds 2 of 3 are missing")
    assert has(leakage.check_partition(tests[:2], common_path=common), "folds 2 of 3 are missing")
    assert has(leakage.check_partition([tests[0], tests[1], tests[1]]), "given more than once")
    # a condition of fold 0 tested again in fold 1 (relabelled test file)
    import anndata as ad

    twice = ad.concat([tests[1], tests[0][:1]], uns_merge="first")
    problems = leakage.check_partition([tests[0], twice, tests[2]])
    assert problems == [p for p in problems if "tested in more than one fold" in p] and len(problems) == 1
    # a condition tested nowhere: dropped from its fold
    fewer = tests[2][1:].copy()
    problems = leakage.check_partition([tests[0], tests[1], fewer], common_path=common)
    assert has(problems, "eligible conditions are tested in no fold") and has(problems, "uns['n_partition_conditions']")
    other = partition_of(task, common, seed=1)
    assert has(leakage.check_partition([tests[0], tests[1], other[2]]), "uns['split_seed'] differs")


def test_partition_command_line(common, tmp_path, capsys):
    common.write_h5ad(tmp_path / "common.h5ad")
    directories = [str(write_split(tmp_path / f"fold{fold}", *split_of("unseen_combination", common, 0, 2, fold)))
                   for fold in range(2)]
    assert leakage.main(["--partition", *directories, "--common", str(tmp_path / "common.h5ad")]) == 0
    assert "every condition tested exactly once" in capsys.readouterr().out
    assert leakage.main(["--partition", directories[0]]) == 1
    assert "folds 1 of 2 are missing" in capsys.readouterr().out
