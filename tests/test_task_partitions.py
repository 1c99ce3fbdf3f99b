"""Tests of K-fold partitions across the three tasks, through the runner, and on real data.

Partition properties (every eligible condition tested in exactly one fold, `check_partition` clean) over
random datasets, seeds and fold counts; gene ranks from training rows; replicate halves that follow the
replicate labels and their controls; the simulator's `expected` layer; byte-identical repeats through
`perturbcast.runner.run_component` (as `perturbcast run` / `viash run`). Real data: Norman 2019 and
McFaline-Figueroa 2023 (PerturBench devel subset) and Datlinger 2017, made into common datasets by
tests/realdata.py; skipped when ../shared/data is absent.
"""
from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import event, given, settings
from hypothesis import strategies as st

from perturbcast import leakage
from perturbcast.leakage import check_split
from perturbcast.runner import run_component

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "utils"))
import formats  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402

import realdata  # noqa: E402
from test_tasks import (COMBINATION, K562, TRANSFER, check_combination_properties, check_common_properties,  # noqa: E402
                        check_transfer_properties, common_datasets, dense, file_format, make_common,
                        run_combination, run_transfer, targets_of)

PERTURBATION = "unseen_perturbation"
TASKS = [PERTURBATION, COMBINATION, TRANSFER]
FOLD_FUNCTIONS = {PERTURBATION: partitions.perturbation_fold, COMBINATION: partitions.combination_fold,
                  TRANSFER: partitions.transfer_fold}


def split_of(task, common, seed, n_folds, fold):
    """Train, test, solution of one fold, made in process as the task's script does."""
    is_test, stratum, exclude, info = FOLD_FUNCTIONS[task](common.obs, n_folds, fold, seed)
    extra = {key: info[key] for key in ("held_out_targets", "held_out_singles", "heldout_contexts") if key in info}
    return splits.build_split(common, is_test, stratum, task, seed, exclude=exclude, n_folds=n_folds, fold=fold,
                              extra_uns={"n_partition_conditions": info["n_partition_conditions"]},
                              extra_solution_uns=extra)


def eligible(common, task) -> set:
    """Independent of partitions.py: the conditions a partition of `task` must test."""
    obs = common.obs[~common.obs["is_control"].to_numpy()]
    keys = set(zip(obs["perturbation"].astype(str), obs["cell_type"].astype(str), obs["condition"].astype(str)))
    if task == COMBINATION:
        return {k for k in keys if "+" in k[0]}
    if task == TRANSFER:
        n_contexts = pd.Series([k[0] for k in keys]).value_counts()
        return {k for k in keys if n_contexts[k[0]] >= 2}
    return keys


def run_partition(task, common, seed, n_folds):
    """{fold: test file} of the applicable folds and {fold: reason} of the others."""
    tests, reasons = {}, {}
    for fold in range(n_folds):
        try:
            train, test, solution = split_of(task, common, seed, n_folds, fold)
        except splits.SplitNotApplicable as error:
            reasons[fold] = str(error)
            continue
        assert check_split(train, test, solution, common_path=common) == [], (task, fold)
        tests[fold] = test
    return tests, reasons


# --------------------------------------------------------------------------------------------------
# every eligible condition in exactly one fold
# --------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(common=common_datasets(), task=st.sampled_from(TASKS), n_folds=st.sampled_from([2, 3, 5]),
       seed=st.integers(0, 1000))
def test_every_eligible_condition_is_tested_in_exactly_one_fold(common, task, n_folds, seed):
    tests, reasons = run_partition(task, common, seed, n_folds)
    tested = [(p, c, d) for test in tests.values()
              for p, c, d in zip(test.obs["perturbation"], test.obs["cell_type"], test.obs["condition"])]
    assert len(tested) == len(set(tested))  # never twice
    assert set(tested) <= eligible(common, task)
    # a fold without a test condition of its own is not applicable; any other reason leaves its share untested
    incomplete = [r for r in reasons.values() if "tests no perturbation" not in r and "fewer than --n_folds" not in r]
    if not incomplete:
        assert set(tested) == eligible(common, task)
        if len(tests) == n_folds:
            assert leakage.check_partition(list(tests.values()), common_path=common) == []
        event(f"{task}: complete partition")
    else:
        allowed = ("no perturbation in training", "no control profiles", "transfer needs at least 2",
                   "no multi-gene perturbations", "two or more contexts", "at least 2")
        assert all(any(a in r for a in allowed) for r in incomplete), incomplete
        event(f"{task}: not applicable")
    for reason in reasons.values():
        if "fewer than --n_folds" in reason:  # only the empty folds of too few units
            assert int(reason.split("fold ")[1].split(" ")[0]) >= int(reason.split("the dataset has ")[1].split(" ")[0])


# --------------------------------------------------------------------------------------------------
# through the runner (as `perturbcast run` / `viash run`)
# --------------------------------------------------------------------------------------------------

def run_task(task, input_path, out_dir: Path, *args, tmp_path=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.h5ad" for name in ("train", "test", "solution")}
    log = out_dir / "stderr.txt"
    with open(log, "w") as handle:
        result = run_component(ROOT / "src" / "tasks" / task,
                               ["--input", str(input_path), "--output_train", str(paths["train"]),
                                "--output_test", str(paths["test"]), "--output_solution", str(paths["solution"]),
                                *map(str, args)], stderr=handle)
    return result.exit_code, log.read_text(), paths


def read_split(paths):
    return [ad.read_h5ad(paths[name]) for name in ("train", "test", "solution")]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The simulated_grn loader's output with small arguments: 12 singles, 6 pairs, 2 cell types."""
    directory = tmp_path_factory.mktemp("simulated")
    path = directory / "common_dataset.h5ad"
    result = run_component(ROOT / "src" / "datasets" / "simulated_grn",
                           ["--output", str(path), "--n_genes", "60", "--n_regulators", "12",
                            "--n_perturbed_genes", "12", "--n_combos", "6", "--cells_per_perturbation", "20",
                            "--n_control_cells", "60"])
    assert result.exit_code == 0
    return ad.read_h5ad(path), path


@pytest.mark.parametrize("task", [COMBINATION, TRANSFER])
def test_runner_on_simulated_data_is_byte_identical_per_seed_and_fold(task, simulated, tmp_path):
    common, path = simulated
    code, log, first = run_task(task, path, tmp_path / "a", "--seed", 3, "--n_folds", 3, "--fold", 1)
    assert code == 0, log
    assert "fold 1 of 3 (seed 3)" in log
    code, _, second = run_task(task, path, tmp_path / "b", "--seed", 3, "--n_folds", 3, "--fold", 1)
    assert code == 0
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    train, test, solution = read_split(first)
    if task == COMBINATION:
        check_combination_properties(common, train, test, solution, 3, n_folds=3, fold=1)
    else:
        check_transfer_properties(common, train, test, solution, 3, n_folds=3, fold=1)
    if "expected" in common.layers:  # the simulator's noise-free truth reaches the solution only
        assert "expected" in solution.layers and "expected" not in train.layers
    assert check_split(*first.values(), common_path=path) == []


def test_runner_heldout_context_argument(simulated, tmp_path):
    common, path = simulated
    code, log, paths = run_task(TRANSFER, path, tmp_path / "a", "--heldout_context", "type_B|none", "--seed", 0,
                                "--n_folds", 2, "--fold", 1)
    assert code == 0, log
    check_transfer_properties(common, *read_split(paths), 0, n_folds=2, fold=1, heldout_context="type_B|none")
    code, log, paths = run_task(TRANSFER, path, tmp_path / "b", "--heldout_context", "type_Z|none")
    assert code == 1 and log.strip().startswith("[error] --heldout_context 'type_Z|none' is not a context")
    assert not any(p.exists() for p in paths.values())


def test_bad_fold_arguments_fail_with_one_line(simulated, tmp_path):
    _, path = simulated
    code, log, paths = run_task(COMBINATION, path, tmp_path / "out", "--fold", 5)
    # one error line (the runner's [notice] on the kept build folder is not the component's)
    lines = [line for line in log.strip().splitlines() if not line.startswith("[notice]")]
    assert code == 1 and len(lines) == 1 and lines[0] == "[error] --fold is 5, expected an integer from 0 to " \
                                                          "n_folds - 1 = 4", log
    assert not any(p.exists() for p in paths.values())

    def fail(message):
        raise ValueError(message)

    for par, why in (({"n_folds": 1}, "--n_folds is 1, expected an integer >= 2"),
                     ({"fold": -1}, "--fold is -1"), ({"seed": -2}, "--seed is -2"),
                     ({"n_folds": 2.5}, "--n_folds is 2.5, expected an integer")):
        with pytest.raises(ValueError, match=why.replace(".", r"\.")):
            splits.split_arguments(par, fail)
    assert splits.split_arguments({}, fail) == (0, 5, 0)


@pytest.mark.parametrize("task, args, why", [(COMBINATION, (), "no multi-gene perturbations"),
                                             (TRANSFER, (), "transfer needs at least 2"),
                                             (COMBINATION, ("--n_folds", 3, "--fold", 2), "fold 2 of 3 has no combinations")])
def test_runner_not_applicable_exits_99_with_one_line(task, args, why, tmp_path):
    perturbations = {"A": K562, "B": K562, "C": K562}
    if args:
        perturbations.update({"A+B": K562, "B+C": K562})
    path = tmp_path / "common.h5ad"
    make_common(perturbations, K562).write_h5ad(path)
    code, log, paths = run_task(task, path, tmp_path / "out", *args)
    lines = log.strip().splitlines()
    assert code == 99 and len(lines) == 1 and lines[0].startswith("[not applicable]") and why in lines[0], log
    assert not any(p.exists() for p in paths.values())


def test_unseen_perturbation_partition_through_the_runner_and_check_split(simulated, tmp_path, capsys):
    """All folds as `perturbcast run` makes them, then `perturbcast check-split --partition`; a repeat of a fold
    with the same seed is byte-identical."""
    common, path = simulated
    directories = []
    for fold in range(3):
        code, log, paths = run_task(PERTURBATION, path, tmp_path / f"fold{fold}", "--seed", 2, "--n_folds", 3,
                                    "--fold", fold)
        assert code == 0, log
        directories.append(str(tmp_path / f"fold{fold}"))
    code, _, again = run_task(PERTURBATION, path, tmp_path / "again", "--seed", 2, "--n_folds", 3, "--fold", 2)
    assert all(paths[n].read_bytes() == again[n].read_bytes() for n in paths)
    assert leakage.main(["--partition", *directories, "--common", str(path)]) == 0
    assert "every condition tested exactly once" in capsys.readouterr().out
    tested = [k for d in directories for k in ad.read_h5ad(Path(d) / "test.h5ad").obs_names]
    assert sorted(tested) == sorted({f"{p}|{c}|{d}" for p, c, d in eligible(common, PERTURBATION)})


# --------------------------------------------------------------------------------------------------
# nothing computed from test rows; replicate halves and their controls; the simulator's truth
# --------------------------------------------------------------------------------------------------

def test_a_gene_variable_only_in_a_test_row_does_not_rank_as_variable():
    perturbations = {p: K562 for p in ["A", "B", "C", "D", "A+B"]}
    common = make_common(perturbations, K562, genes=["A", "B", "C", "D", "F0", "F1", "SPIKE"], seed=4)
    X = dense(common.X).astype(np.float32)
    spike = list(common.var_names).index("SPIKE")
    X[:, spike] = 1.0
    fold_of = partitions.gene_folds(["A", "B", "C", "D"], 2, 0)[0]
    fold = fold_of["C"]
    row = np.flatnonzero((common.obs["perturbation"] == "C").to_numpy())[0]
    X[row, spike] = 50.0  # variance only through one profile of a test condition
    common.X = X
    variance = X.astype(np.float64).var(axis=0)
    common.var["highly_variable_rank"] = np.argsort(np.argsort(-variance, kind="stable"), kind="stable")
    assert common.var.loc["SPIKE", "highly_variable_rank"] == 0  # the loader's all-rows rank
    train, test, solution = split_of(PERTURBATION, common, 0, 2, fold)
    assert "C" in set(test.obs["perturbation"])
    for adata in (train, test, solution):
        assert adata.var.loc["SPIKE", "highly_variable_rank"] == common.n_vars - 1  # constant in training
    check_common_properties(common, train, test, solution, PERTURBATION, 0, n_folds=2, fold=fold,
                            excluded=common.obs_names[~common.obs_names.isin(train.obs_names)
                                                      & ~common.obs["perturbation"].isin(test.obs["perturbation"])])


def test_replicate_halves_follow_biological_labels_with_controls_of_the_same_half():
    contexts = [("K562", "none")]
    common = make_common({p: contexts for p in ["A", "B", "C", "D"]}, contexts, n_replicates=3, seed=5)
    common.obs["replicate"] = common.obs["replicate"].map({"r1": "1", "r2": "2", "r3": "3"})
    # C lost replicate 2: its replicates 1 and 3 are both in half 1 -> split on its own
    common = common[~((common.obs["perturbation"] == "C") & (common.obs["replicate"] == "2")).to_numpy()].copy()
    assert splits.replicate_half_of_labels(["3", "1", "2", "10"]) == {"1": 1, "2": 2, "3": 1, "10": 2}
    assert splits.replicate_half_of_labels(["r2", "r1"]) == {"r1": 1, "r2": 2}
    train, test, solution = split_of(PERTURBATION, common, 0, 2, 0)
    obs, X = common.obs, dense(common.X).astype(np.float64)
    controls = obs["is_control"].to_numpy()
    for k, perturbation in enumerate(solution.obs["perturbation"]):
        rows = (obs["perturbation"] == perturbation).to_numpy()
        if perturbation == "C":  # halves not by label: every control profile of the context (both parts)
            for half in (1, 2):
                np.testing.assert_allclose(solution.layers[f"control_replicate_{half}"][k], X[controls].mean(0), rtol=1e-5)
            continue
        for half, labels in ((1, ["1", "3"]), (2, ["2"])):
            in_half = obs["replicate"].isin(labels).to_numpy()
            np.testing.assert_allclose(solution.layers[f"replicate_{half}"][k], X[rows & in_half].mean(0), rtol=1e-5)
            np.testing.assert_allclose(solution.layers[f"control_replicate_{half}"][k], X[controls & in_half].mean(0),
                                       rtol=1e-5)
    assert solution.uns["n_replicate_fallback_conditions"] == int("C" in set(solution.obs["perturbation"]))
    check_common_properties(common, train, test, solution, PERTURBATION, 0, n_folds=2, fold=0,
                            excluded=common.obs_names[~common.obs_names.isin(train.obs_names)
                                                      & ~common.obs["perturbation"].isin(test.obs["perturbation"])])


def test_expected_layer_reaches_the_solution_only():
    common = make_common({p: K562 for p in ["A", "B", "C", "A+B"]}, K562, seed=6)
    rng = np.random.default_rng(0)
    common.layers["expected"] = rng.random(common.shape).astype(np.float32)
    train, test, solution = split_of(PERTURBATION, common, 0, 2, 1)
    assert "expected" not in train.layers and not test.layers
    for k, perturbation in enumerate(solution.obs["perturbation"]):
        rows = (common.obs["perturbation"] == perturbation).to_numpy()
        np.testing.assert_allclose(solution.layers["expected"][k], common.layers["expected"][rows].mean(0), rtol=1e-5)
    assert formats.check_anndata(solution, file_format("solution")) == []


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------

def test_real_partitions_of_every_task(capsys):
    """Every task on every real subset, two seeds: each eligible condition in exactly one fold."""
    lines = []
    for name in ("norman19", "mcfaline23", "datlinger2017"):
        common = getattr(realdata, f"{name}_common")()
        for task in TASKS:
            for seed in (0, 1):
                tests, reasons = run_partition(task, common, seed, 5)
                if not tests:
                    assert len(reasons) == 5 and len(set(reasons.values())) == 1
                    lines.append(f"{name} {task}: not applicable ({reasons[0]})")
                    break
                assert not reasons, reasons
                assert leakage.check_partition(list(tests.values()), common_path=common) == []
                tested = [k for t in tests.values() for k in zip(t.obs["perturbation"], t.obs["cell_type"],
                                                                 t.obs["condition"])]
                assert sorted(tested) == sorted(eligible(common, task))
                if seed == 0:
                    units = {PERTURBATION: "target genes", COMBINATION: "combinations",
                             TRANSFER: "(context, perturbation) units"}[task]
                    n_units = {PERTURBATION: len({g for p in set(common.obs["perturbation"]) for g in targets_of(p)}),
                               COMBINATION: len({p for p in set(common.obs["perturbation"]) if "+" in p}),
                               TRANSFER: len(tested)}[task]
                    strata = [dict(sorted(t.obs["stratum"].value_counts().items())) for t in tests.values()]
                    lines.append(f"{name} {task}: {n_units} {units}, 5 folds, {len(tested)} test conditions; "
                                 f"per fold {[t.n_obs for t in tests.values()]} {strata}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_norman19_combinations(tmp_path):
    common = realdata.norman19_common()
    assert formats.check_anndata(common, file_format("common_dataset")) == []
    path = tmp_path / "norman19.h5ad"
    common.write_h5ad(path)
    code, log, first = run_task(COMBINATION, path, tmp_path / "a", "--seed", 0)
    assert code == 0, log
    check_combination_properties(common, *read_split(first), 0)
    assert check_split(*first.values(), common_path=path) == []
    all_strata = set()
    for seed in range(3):
        tested = []
        for fold in range(5):
            train, test, solution = run_combination(common, seed, 5, fold)
            all_strata |= set(check_combination_properties(common, train, test, solution, seed, 5, fold))
            tested += list(test.obs["perturbation"])
        assert sorted(tested) == sorted(p for p in set(common.obs["perturbation"]) if "+" in p)  # each once
    assert all_strata == {"combo_seen0", "combo_seen1", "combo_seen2"}


@pytest.mark.parametrize("name", ["mcfaline23", "datlinger2017"])
def test_real_transfer(name, tmp_path):
    common = getattr(realdata, f"{name}_common")()
    assert formats.check_anndata(common, file_format("common_dataset")) == []
    contexts = partitions.contexts_of(common.obs)
    assert len(contexts) == {"mcfaline23": 3, "datlinger2017": 2}[name]
    path = tmp_path / f"{name}.h5ad"
    common.write_h5ad(path)
    code, log, paths = run_task(TRANSFER, path, tmp_path / "run", "--seed", 0)
    assert code == 0, log
    check_transfer_properties(common, *read_split(paths), 0)
    assert check_split(*paths.values(), common_path=path) == []
    held = {}
    for fold in range(5):
        train, test, solution = run_transfer(common, 0, 5, fold)
        check_transfer_properties(common, train, test, solution, 0, 5, fold)
        held[fold] = sorted(test.obs_names)
    units = [u for names in held.values() for u in names]
    assert len(units) == len(set(units)) == solution.uns["n_partition_conditions"]
    assert {u.split("|", 1)[1] for u in units} == {"|".join(c) for c in contexts}
    print(f"{name} cell_type_transfer: {len(units)} units; per fold {[len(v) for v in held.values()]}")
