"""Tests of the `unseen_perturbation` task component and the shared split helpers (src/utils/splits.py).

The component runs through the runner (perturbcast.runner.run_component, what `perturbcast run` does),
which builds it with its processed config and checks its outputs against their API formats. Common
datasets are built here as small AnnData objects that follow src/api/file_common_dataset.yaml.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from perturbcast.runner import run_component

ROOT = Path(__file__).resolve().parents[1]
UTILS = ROOT / "src" / "utils"
COMPONENT = ROOT / "src" / "tasks" / "unseen_perturbation"
API = ROOT / "src" / "api"

sys.path.insert(0, str(UTILS))
import formats  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402
import vocabulary  # noqa: E402
from realdata import norman19_common  # noqa: E402
from test_tasks import reference_controls  # noqa: E402

TASK_ID = "unseen_perturbation"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def file_format(name: str) -> dict:
    with open(API / f"file_{name}.yaml") as handle:
        return yaml.safe_load(handle)["info"]["format"]


def run_task(input_path, out_dir: Path, seed=0, n_folds=5, fold=0):
    """Run the component through the runner (`perturbcast run`); returns (result, {name: path}), where
    `result.returncode` is the exit code and `result.stderr` the component's stderr (the runner's own
    `[notice]` lines, e.g. the build folder it keeps after a failure, left out)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {name: str(out_dir / f"{name}.h5ad") for name in ("train", "test", "solution")}
    argv = ["--input", str(input_path), "--output_train", outputs["train"], "--output_test", outputs["test"],
            "--output_solution", outputs["solution"], "--seed", str(seed), "--n_folds", str(n_folds),
            "--fold", str(fold)]
    logs = {name: out_dir / f"{name}.txt" for name in ("stdout", "stderr")}
    # a failed run's build folder is kept: beside out_dir, not in /tmp
    with open(logs["stdout"], "w") as stdout, open(logs["stderr"], "w") as stderr, \
            mock.patch.dict(os.environ, {"VIASH_TEMP": str(out_dir.parent / f"{out_dir.name}_viash_temp")}):
        result = run_component(COMPONENT, argv, stdout=stdout, stderr=stderr)
    stderr_text = "".join(line for line in logs["stderr"].read_text().splitlines(keepends=True)
                          if not line.startswith("[notice]"))
    return SimpleNamespace(returncode=result.exit_code, stdout=logs["stdout"].read_text(), stderr=stderr_text), outputs


def read_outputs(outputs):
    return {name: ad.read_h5ad(path) for name, path in outputs.items()}


def make_common(perturbations, cell_types=("K562", "RPE1"), genes=None, replicates=("r1", "r2"), seed=0,
                sparse=False, skip=(), dataset_id="synthetic", perturbation_type="knockdown"):
    """A common dataset: one profile per perturbation x cell_type x 'none' x replicate (+ controls).

    `skip`: (perturbation, cell_type) pairs that are not measured."""
    rng = np.random.default_rng(seed)
    genes = list(genes) if genes is not None else [f"G{i:02d}" for i in range(30)]
    records = []
    for cell_type in cell_types:
        for perturbation in ["control", *perturbations]:
            if (perturbation, cell_type) in skip:
                continue
            for replicate in replicates:
                n_targets = 0 if perturbation == "control" else len(perturbation.split("+"))
                for part in ((1, 2) if perturbation == "control" else (0,)):  # control parts, as loaders cut them
                    records.append({
                        "perturbation": perturbation, "is_control": perturbation == "control",
                        "perturbation_type": perturbation_type, "n_targets": n_targets, "cell_type": cell_type,
                        "condition": "none", "replicate": replicate, "n_cells": int(rng.integers(20, 200)),
                        "control_part": part,
                    })
    obs = pd.DataFrame(records)
    obs.index = [f"{r.perturbation}|{r.cell_type}|{r.condition}|{r.replicate}" + (f"|p{r.control_part}" if r.control_part
                 else "") for r in obs.itertuples()]
    X = rng.gamma(2.0, 0.5, size=(len(obs), len(genes))).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = 0
    counts = np.round(np.expm1(X) * 10).astype(np.float32)
    var = pd.DataFrame(index=genes)
    var["gene_id"] = [f"ENSG{i:011d}" for i in range(len(genes))]
    var["highly_variable_rank"] = np.argsort(np.argsort(-X.var(axis=0))).astype(np.int64)
    var["mean_expression"] = X.mean(axis=0).astype(np.float64)
    uns = {"dataset_id": dataset_id, "dataset_name": "Synthetic", "dataset_summary": "Synthetic screen.",
           "dataset_description": "Random profiles for tests.", "dataset_url": "https://example.org",
           "dataset_reference": "10.0000/none", "dataset_organism": "homo_sapiens",
           "normalization_id": "log_cp10k", "source_sha256": "0" * 64}
    adata = ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=obs, var=var, uns=uns)
    adata.layers["counts"] = counts
    return adata


def targets_of(obs):
    return [vocabulary.targets(p) for p in obs["perturbation"].astype(str)]


def row_mean(common, rows):
    X = common.X[rows]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return X.astype(np.float64).mean(axis=0)


# --------------------------------------------------------------------------------------------------
# the main synthetic dataset
# --------------------------------------------------------------------------------------------------

MAIN_GENES = [f"T{i:02d}" for i in range(1, 12)] + [f"G{i:02d}" for i in range(25)]
MAIN_PERTURBATIONS = (
    [f"T{i:02d}" for i in range(1, 12)]
    + ["T01+T02", "T01+T03", "T02+T05", "T03+T04", "T04+T06", "T05+T07", "T06+T08", "T07+T09", "T08+T10",
       "T09+T11", "T10+T12", "T11+T12", "T02+T09", "T01+T10"]
)


@pytest.fixture(scope="module")
def main_common(tmp_path_factory):
    directory = tmp_path_factory.mktemp("main")
    common = make_common(MAIN_PERTURBATIONS, genes=MAIN_GENES, sparse=True,
                         skip={("T03+T04", "RPE1"), ("T11", "RPE1")})
    path = directory / "common_dataset.h5ad"
    common.write_h5ad(path)
    return common, path


@pytest.fixture(scope="module")
def main_run(main_common, tmp_path_factory):
    common, path = main_common
    result, outputs = run_task(path, tmp_path_factory.mktemp("run_seed0"), seed=0)
    assert result.returncode == 0, result.stderr
    return common, outputs, read_outputs(outputs), result


def check_split_properties(common, out):
    """The properties every unseen_perturbation split must have; returns the held-out genes."""
    train, test, solution = out["train"], out["test"], out["solution"]
    held = set(solution.uns["held_out_targets"])
    assert held
    common_targets = targets_of(common.obs)
    all_genes = {g for t in common_targets for g in t}
    assert held < all_genes  # at least one target gene left in training
    rank = np.empty(train.n_vars, dtype=np.int64)
    X_train = train.X.toarray() if sp.issparse(train.X) else np.asarray(train.X)
    rank[np.argsort(-X_train.astype(np.float64).var(axis=0), kind="stable")] = np.arange(train.n_vars)
    for adata in (train, test, solution):  # variability over the training rows only
        np.testing.assert_array_equal(adata.var["highly_variable_rank"].to_numpy(), rank)
    # no held-out target gene in any training perturbation; every test perturbation touches one
    for targets in targets_of(train.obs):
        assert held.isdisjoint(targets)
    for targets in targets_of(test.obs):
        assert not held.isdisjoint(targets)
    # controls in train except the reference part (replicate half 2 of each context), none in test
    controls = common.obs_names[common.obs["is_control"].to_numpy()]
    reference = reference_controls(common.obs)
    assert set(controls) - reference == set(controls) & set(train.obs_names)
    assert "control" not in set(test.obs["perturbation"])
    # every common row is in train, a replicate of a test condition, or excluded: a perturbation touching a
    # held-out gene whose first target (in the partition's seeded gene order) belongs to another fold
    test_keys = set(zip(test.obs["perturbation"], test.obs["cell_type"], test.obs["condition"]))
    fold_of, position = partitions.gene_folds(all_genes, solution.uns["n_folds"], solution.uns["split_seed"])
    assert held == {g for g in all_genes if fold_of[g] == solution.uns["fold"]}
    for name, row in common.obs.iterrows():
        key = (row["perturbation"], row["cell_type"], row["condition"])
        targets = () if row["perturbation"] == "control" else tuple(row["perturbation"].split("+"))
        owner = fold_of[min(targets, key=position.__getitem__)] if targets else -1
        excluded = bool(held & set(targets)) and owner != solution.uns["fold"]
        assert (name in train.obs_names) + (key in test_keys) + excluded + (name in reference) == 1, name
        assert (key in test_keys) == (bool(held & set(targets)) and owner == solution.uns["fold"])
    # train = common rows unchanged; same genes in the same order everywhere
    assert list(train.var_names) == list(common.var_names)
    assert list(test.var_names) == list(common.var_names) == list(solution.var_names)
    assert list(test.obs_names) == list(solution.obs_names)
    rows = common.obs_names.get_indexer(train.obs_names)
    dense = lambda m: m.toarray() if sp.issparse(m) else np.asarray(m)  # noqa: E731
    np.testing.assert_array_equal(dense(train.X), dense(common.X[rows]))
    # the test file reveals no expression
    assert sp.issparse(test.X) and test.X.nnz == 0 and test.X.shape == (test.n_obs, test.n_vars)
    # ids
    for adata in (train, test, solution):
        assert adata.uns["task_id"] == TASK_ID
        assert adata.uns["dataset_id"] == common.uns["dataset_id"]
        assert adata.uns["normalization_id"] == common.uns["normalization_id"]
    # readable obs ids
    for name, row in test.obs.iterrows():
        assert name == f"{row['perturbation']}|{row['cell_type']}|{row['condition']}"
    # strata follow the definitions
    seen = {g for t in targets_of(train.obs) for g in t}
    for row in test.obs.itertuples():
        targets = row.perturbation.split("+")
        n_seen = sum(g in seen for g in targets)
        expected = "single" if len(targets) == 1 else "combo_seen0" if n_seen == 0 else "combo_seen1"
        assert row.stratum == expected, row
        assert row.n_targets == len(targets)
    # solution: X = mean over replicates = mean of the two replicate layers (2 replicates each here)
    for k, row in enumerate(solution.obs.itertuples()):
        mask = ((common.obs["perturbation"] == row.perturbation) & (common.obs["cell_type"] == row.cell_type)
                & (common.obs["condition"] == row.condition)).to_numpy()
        np.testing.assert_allclose(solution.X[k], row_mean(common, np.flatnonzero(mask)), rtol=1e-5, atol=1e-6)
        assert row.n_cells == int(common.obs["n_cells"][mask].sum())
        control_mask = (common.obs["is_control"] & (common.obs["cell_type"] == row.cell_type)
                        & (common.obs["condition"] == row.condition)).to_numpy()
        held_controls = control_mask & common.obs_names.isin(reference_controls(common.obs))
        np.testing.assert_allclose(solution.layers["control"][k],
                                   row_mean(common, np.flatnonzero(control_mask & ~held_controls)), rtol=1e-5, atol=1e-6)
        reference = held_controls if held_controls.any() else control_mask  # no parts: one control for both
        np.testing.assert_allclose(solution.layers["control_reference"][k], row_mean(common, np.flatnonzero(reference)),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(solution.X, (solution.layers["replicate_1"] + solution.layers["replicate_2"]) / 2,
                               rtol=1e-5, atol=1e-6)
    for matrix in (solution.X, *solution.layers.values()):
        assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float32
    # target_expression = solution X at each target gene, `nan` when the target is not measured
    genes = list(common.var_names)
    for k, row in enumerate(solution.obs.itertuples()):
        levels = row.target_expression.split("+")
        for gene, level in zip(row.perturbation.split("+"), levels):
            if gene in genes:
                assert float(level) == pytest.approx(float(solution.X[k, genes.index(gene)]), rel=1e-5, abs=1e-6)
            else:
                assert level == "nan"
    assert list(test.obs["target_expression"]) == list(solution.obs["target_expression"])
    # formats
    for name in ("train", "test", "solution"):
        assert formats.check_anndata(out[name], file_format(name)) == []
    return held


def test_split_properties_on_synthetic_data(main_run):
    common, _, out, result = main_run
    held = check_split_properties(common, out)
    # 12 target genes (T12 only in combinations) dealt into 5 folds: fold 0 holds out 3 of them
    assert len(held) == 3
    assert out["solution"].uns["n_partition_conditions"] == 2 * len(MAIN_PERTURBATIONS) - 2
    assert "counts" in out["train"].layers
    assert set(out["test"].obs["stratum"]) <= {"single", "combo_seen1", "combo_seen0"}
    assert out["solution"].uns["n_single_replicate_conditions"] == 0
    # one line of summary on stderr
    assert "fold 0 of 5 (seed 0) holds out 3 of 12 target genes" in result.stderr


def test_train_mean_expression_does_not_leak_test_profiles(main_run):
    common, _, out, _ = main_run
    train = out["train"]
    np.testing.assert_allclose(train.var["mean_expression"].to_numpy(),
                               row_mean(train, np.arange(train.n_obs)), rtol=1e-5, atol=1e-6)


def test_same_seed_same_split(main_common, main_run, tmp_path):
    common, path = main_common
    _, first_paths, first, _ = main_run
    result, outputs = run_task(path, tmp_path / "again", seed=0)
    assert result.returncode == 0, result.stderr
    second = read_outputs(outputs)
    for name in ("train", "test", "solution"):
        a, b = first[name], second[name]
        assert list(a.obs_names) == list(b.obs_names)
        pd.testing.assert_frame_equal(a.obs, b.obs)
        dense = lambda m: m.toarray() if sp.issparse(m) else np.asarray(m)  # noqa: E731
        np.testing.assert_array_equal(dense(a.X), dense(b.X))
        for layer in a.layers:
            np.testing.assert_array_equal(dense(a.layers[layer]), dense(b.layers[layer]))
        # and byte-identical files
        assert Path(first_paths[name]).read_bytes() == Path(outputs[name]).read_bytes(), name


def test_different_seed_differs_and_outputs_pass_the_config_formats(main_common, main_run, tmp_path):
    common, path = main_common
    first = main_run[2]
    # the runner passes the component its processed config and validates the outputs against the formats
    result, outputs = run_task(path, tmp_path / "seed1", seed=1)
    assert result.returncode == 0, result.stderr
    other = read_outputs(outputs)
    assert other["solution"].uns["split_seed"] == 1
    assert set(other["solution"].uns["held_out_targets"]) != set(first["solution"].uns["held_out_targets"])
    assert set(other["test"].obs_names) != set(first["test"].obs_names)
    check_split_properties(common, other)


# --------------------------------------------------------------------------------------------------
# hand-made cases
# --------------------------------------------------------------------------------------------------

def test_strata_on_a_hand_made_case(tmp_path):
    # Target genes A, B, C, D, E and Z (Z is not among the measured genes). E is only perturbed
    # together with A. Pick a seed and fold that hold out exactly {A, Z} (2 of 6 in 3 folds), with A
    # before E in the seeded gene order, so A+E belongs to this fold.
    perturbations = ["A", "B", "C", "Z", "A+B", "A+C", "A+E", "A+Z", "B+D", "C+D"]
    genes = ["A", "B", "C", "D", "E", "G1", "G2", "G3", "G4", "G5"]
    all_targets = ["A", "B", "C", "D", "E", "Z"]

    def holds_a_and_z(seed):
        fold_of, position = partitions.gene_folds(all_targets, 3, seed)
        return fold_of["A"] == fold_of["Z"] and position["A"] < min(position[g] for g in "BCEZ")

    seed = next(s for s in range(10_000) if holds_a_and_z(s))
    fold = partitions.gene_folds(all_targets, 3, seed)[0]["A"]
    common = make_common(perturbations, cell_types=("K562",), genes=genes, seed=3)
    path = tmp_path / "common.h5ad"
    common.write_h5ad(path)
    result, outputs = run_task(path, tmp_path / "out", seed=seed, n_folds=3, fold=fold)
    assert result.returncode == 0, result.stderr
    out = read_outputs(outputs)
    assert set(check_split_properties(common, out)) == {"A", "Z"}
    test, solution = out["test"], out["solution"]
    assert dict(zip(test.obs["perturbation"], test.obs["stratum"])) == {
        "A": "single", "Z": "single",
        "A+B": "combo_seen1", "A+C": "combo_seen1",
        "A+Z": "combo_seen0",   # both targets held out
        "A+E": "combo_seen0",   # E is not held out but no training perturbation targets it
    }
    assert list(test.obs_names) == ["A|K562|none", "A+B|K562|none", "A+C|K562|none", "A+E|K562|none",
                                    "A+Z|K562|none", "Z|K562|none"]
    assert sorted(out["train"].obs["perturbation"].unique()) == ["B", "B+D", "C", "C+D", "control"]
    # target_expression by hand: mean of the two replicate profiles at the target's column
    a_rows = np.flatnonzero((common.obs["perturbation"] == "A+B").to_numpy())
    level_a, level_b = row_mean(common, a_rows)[[genes.index("A"), genes.index("B")]]
    assert test.obs.loc["A+B|K562|none", "target_expression"] == f"{level_a:.6g}+{level_b:.6g}"
    assert test.obs.loc["Z|K562|none", "target_expression"] == "nan"
    assert test.obs.loc["A+Z|K562|none", "target_expression"].endswith("+nan")
    k = list(solution.obs_names).index("A+B|K562|none")
    assert float(test.obs.loc["A+B|K562|none", "target_expression"].split("+")[0]) == pytest.approx(
        float(solution.X[k, genes.index("A")]), rel=1e-5)
    # control layer = part 1 of K562 x none's controls (both replicates); the reference = part 2
    is_control = common.obs["is_control"].to_numpy()
    for layer, part in (("control", 1), ("control_reference", 2)):
        rows = np.flatnonzero(is_control & (common.obs["control_part"] == part).to_numpy())
        assert len(rows) == 2 and set(common.obs["replicate"].iloc[rows]) == {"r1", "r2"}
        np.testing.assert_allclose(solution.layers[layer][k], row_mean(common, rows), rtol=1e-5)


def test_a_combination_across_two_parts_is_tested_once_and_excluded_elsewhere():
    # A+B with A and B in different parts: tested in the fold of whichever comes first in the seeded order
    common = make_common(["A", "B", "C", "D", "A+B", "C+D"], cell_types=("K562",), genes=["A", "B", "C", "D", "G1"])
    for seed in range(10):
        fold_of, position = partitions.gene_folds(["A", "B", "C", "D"], 2, seed)
        if fold_of["A"] == fold_of["B"]:
            continue
        first = min("AB", key=position.__getitem__)
        for fold in range(2):
            is_test, stratum, exclude, info = partitions.perturbation_fold(common.obs, 2, fold, seed)
            rows = (common.obs["perturbation"] == "A+B").to_numpy()
            assert is_test[rows].all() == (fold_of[first] == fold)
            assert exclude[rows].all() == (fold_of[first] != fold)
        return
    raise AssertionError("no seed below 10 puts A and B in different folds")


def test_single_target_gene_is_not_applicable(tmp_path):
    common = make_common(["G01"], cell_types=("K562",))
    path = tmp_path / "common.h5ad"
    common.write_h5ad(path)
    result, outputs = run_task(path, tmp_path / "out")
    assert result.returncode == 99, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[not applicable]") and "target gene" in lines[0]
    assert not any(os.path.exists(p) for p in outputs.values())


def test_missing_perturbation_column_fails_with_one_line(tmp_path):
    common = make_common(["G01", "G02", "G01+G02"], cell_types=("K562",))
    del common.obs["perturbation"]
    path = tmp_path / "common.h5ad"
    common.write_h5ad(path)
    result, outputs = run_task(path, tmp_path / "out")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[error]") and "obs['perturbation']" in lines[0]
    assert "Traceback" not in result.stderr
    assert not any(os.path.exists(p) for p in outputs.values())
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".h5ad")]


# --------------------------------------------------------------------------------------------------
# shared helpers, in process
# --------------------------------------------------------------------------------------------------

def test_gene_partition_is_balanced_seeded_and_order_free():
    genes = [f"G{i}" for i in range(11)]
    fold_of, position = partitions.gene_folds(genes, 5, 0)
    sizes = sorted(np.bincount(list(fold_of.values()), minlength=5))
    assert sizes == [2, 2, 2, 2, 3] and sorted(position.values()) == list(range(11))
    assert partitions.gene_folds(list(reversed(genes)), 5, 0) == (fold_of, position)
    assert partitions.gene_folds(genes, 5, 1)[0] != fold_of
    common = make_common(["A", "B", "A+B"], cell_types=("K562",), genes=["A", "B", "G1"])
    with pytest.raises(splits.SplitNotApplicable, match="fold 2 of 3 has no target genes: the dataset has 2"):
        partitions.perturbation_fold(common.obs, 3, 2, 0)


def test_replicate_halves_and_single_replicate_conditions():
    common = make_common(["A", "B", "C"], cell_types=("K562",), genes=["A", "B", "C", "G1"],
                         replicates=("r1", "r2", "r3"))
    # drop r2 and r3 of A: A has one replicate left
    keep = ~((common.obs["perturbation"] == "A") & (common.obs["replicate"] != "r1")).to_numpy()
    common = common[keep].copy()
    targets = splits.row_targets(common.obs)
    is_test = splits.touches(targets, ["A", "B"])
    stratum = np.where(is_test, "single", "")
    train, test, solution = splits.build_split(common, is_test, stratum, task_id="t", seed=0)
    assert solution.uns["n_single_replicate_conditions"] == 1
    k = list(solution.obs_names).index("A|K562|none")
    np.testing.assert_array_equal(solution.layers["replicate_1"][k], solution.layers["replicate_2"][k])
    b = list(solution.obs_names).index("B|K562|none")
    b_rows = np.flatnonzero((common.obs["perturbation"] == "B").to_numpy())
    np.testing.assert_allclose(solution.X[b], row_mean(common, b_rows), rtol=1e-6)
    # three replicates: one half is a single profile, the other the mean of two
    halves = {tuple(solution.layers[layer][b]) for layer in ("replicate_1", "replicate_2")}
    singles = {tuple(common.X[r].astype(np.float32)) for r in b_rows}
    assert len(halves & singles) == 1
    again = splits.build_split(common, is_test, stratum, task_id="t", seed=0)[2]
    np.testing.assert_array_equal(again.layers["replicate_1"], solution.layers["replicate_1"])


def test_context_without_controls_is_not_applicable():
    common = make_common(["A", "B", "A+B"], cell_types=("K562", "RPE1"), genes=["A", "B", "G1"],
                         skip={("control", "RPE1")})
    targets = splits.row_targets(common.obs)
    is_test = splits.touches(targets, ["A"])
    with pytest.raises(splits.SplitNotApplicable, match="no control profiles for cell_type 'RPE1'"):
        splits.build_split(common, is_test, np.where(is_test, "x", ""), task_id="t", seed=0)


def test_unsorted_or_inconsistent_perturbations_are_input_errors():
    common = make_common(["A", "B"], cell_types=("K562",), genes=["A", "B", "G1"])
    bad = common.obs.copy()
    bad["perturbation"] = bad["perturbation"].replace({"A": "B+A"})
    bad.loc[bad["perturbation"] == "B+A", "n_targets"] = 2
    with pytest.raises(splits.SplitInputError, match="sorted"):
        splits.row_targets(bad)
    bad = common.obs.copy()
    bad.loc[bad["perturbation"] == "A", "is_control"] = True
    with pytest.raises(splits.SplitInputError, match="is_control"):
        splits.row_targets(bad)


# --------------------------------------------------------------------------------------------------
# real data: Norman et al. 2019 subset of the PerturBench development file
# --------------------------------------------------------------------------------------------------

def test_norman19_devel(tmp_path):
    common = norman19_common()
    assert formats.check_anndata(common, file_format("common_dataset")) == []
    path = tmp_path / "norman19.h5ad"
    common.write_h5ad(path)
    result, outputs = run_task(path, tmp_path / "out", seed=0)
    assert result.returncode == 0, result.stderr
    out = read_outputs(outputs)
    held = check_split_properties(common, out)
    genes = {g for t in targets_of(common.obs) for g in t}
    assert len(held) in (len(genes) // 5, -(-len(genes) // 5))
    strata = out["test"].obs["stratum"].value_counts().to_dict()
    assert strata.get("single", 0) >= 1
    print(f"norman19 devel: {len(genes)} target genes, held out {sorted(held)}; train {out['train'].n_obs} "
          f"profiles; test {out['test'].n_obs} conditions {strata}")
