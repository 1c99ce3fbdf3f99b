"""No leak (issue 21, item 8): what a method can read is computed from training conditions only.

For every task, the task runs twice on the test resources' simulated dataset and its cells: once as made,
once after a test condition's expression was changed (its profiles' `X` and `counts`, its cells, and what a
loader computes over all conditions from them: `dataset_report`, the var statistics). The files a method
reads (train.h5ad, test.h5ad, train_cells.h5ad) must be identical element by element (every HDF5 dataset's
values and attributes: X, layers, obs, var, uns) and byte for byte, while the solution files, which only
scoring reads, change. The target genes keep their values: the test file reveals their measured level on purpose
(`obs['target_expression']`, DESIGN §3), so that reveal is tested on its own (it changes with them and
nothing else does).
"""
from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import ROOT
from test_methods import run

sys.path.insert(0, str(ROOT / "src" / "utils"))
import splits  # noqa: E402
from dataset_report import dataset_report  # noqa: E402

TASKS = ("unseen_perturbation", "unseen_combination", "cell_type_transfer")
METHOD_VISIBLE = ("train.h5ad", "test.h5ad", "train_cells.h5ad")
SCORING_ONLY = ("solution.h5ad", "solution_cells.h5ad")


def run_task(task: str, common: Path, cells: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    code, err = run(f"src/tasks/{task}", {
        "input": common, "input_cells": cells, "seed": 0, "output_train": out / "train.h5ad",
        "output_test": out / "test.h5ad", "output_solution": out / "solution.h5ad",
        "output_train_cells": out / "train_cells.h5ad", "output_solution_cells": out / "solution_cells.h5ad"},
        out / "task.log")
    assert code == 0, err
    return out


def contents(path: Path) -> dict:
    """Every HDF5 group's and dataset's attributes and every dataset's values, by path in the file."""
    found = {}
    with h5py.File(path, "r") as handle:
        def visit(name, node):
            attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in node.attrs.items()}
            value = node[()] if isinstance(node, h5py.Dataset) else None
            if isinstance(value, np.ndarray):  # strings (object arrays) by value, numbers by their bytes
                value = value.tolist() if value.dtype == object else (str(value.dtype), value.shape, value.tobytes())
            found[name] = (attrs, value)
        handle.visititems(visit)
        found["/"] = ({k: str(v) for k, v in handle.attrs.items()}, None)
    return found


def differences(a: Path, b: Path) -> list[str]:
    first, second = contents(a), contents(b)
    return sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))


def changed_inputs(common_path: Path, cells_path: Path, solution: ad.AnnData, out: Path, targets_too=False):
    """The common dataset and cells file with the first test condition's expression changed; the
    loader-computed statistics (dataset_report, var columns) recomputed from the changed values."""
    out.mkdir(parents=True, exist_ok=True)
    common = ad.read_h5ad(common_path)
    first = solution.obs.iloc[0]
    rows = np.flatnonzero(((common.obs["perturbation"] == first["perturbation"])
                           & (common.obs["cell_type"] == first["cell_type"])
                           & (common.obs["condition"] == first["condition"])).to_numpy())
    assert len(rows) >= 1
    genes = np.ones(common.n_vars, dtype=bool)
    if not targets_too:
        genes[common.var_names.get_indexer([t for t in first["perturbation"].split("+") if t in common.var_names])] = False
    X = np.asarray(common.X.toarray() if sp.issparse(common.X) else common.X, dtype=np.float32)
    X[np.ix_(rows, np.flatnonzero(genes))] += np.float32(0.75)
    common.X = X
    if "counts" in common.layers:
        counts = np.asarray(common.layers["counts"].toarray() if sp.issparse(common.layers["counts"])
                            else common.layers["counts"], dtype=np.float32)
        counts[np.ix_(rows, np.flatnonzero(genes))] *= 3
        common.layers["counts"] = counts
    common.var["highly_variable_rank"] = splits.variability_rank(X)
    if "mean_expression" in common.var.columns:
        common.var["mean_expression"] = X.mean(axis=0).astype(np.float64)
    before = common.uns.get("dataset_report")
    common.uns["dataset_report"] = dataset_report(common)
    common.write_h5ad(out / "common.h5ad")

    cells = ad.read_h5ad(cells_path)
    mine = np.flatnonzero(cells.obs["profile_id"].astype(str).isin(common.obs_names[rows]).to_numpy())
    assert len(mine) > 0
    for name in [None, *cells.layers.keys()]:
        matrix = sp.csr_matrix(cells.X if name is None else cells.layers[name], dtype=np.float32)
        dense = matrix[mine].toarray()
        dense[:, genes] = dense[:, genes] * 3 + 1  # counts stay whole numbers, log values stay positive
        matrix = _replace_rows(matrix, mine, dense)
        if name is None:
            cells.X = matrix
        else:
            cells.layers[name] = matrix
    cells.write_h5ad(out / "cells.h5ad")
    return out / "common.h5ad", out / "cells.h5ad", before, common.uns["dataset_report"]


def _replace_rows(matrix: sp.csr_matrix, rows: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
    lil = matrix.tolil()
    lil[rows] = values
    return lil.tocsr().astype(np.float32)


@pytest.fixture(scope="module")
def runs(test_resources, tmp_path_factory):
    """task -> (folder of the run on the dataset as made, folder of the run on the changed dataset, reports)."""
    common, cells = test_resources / "common_dataset.h5ad", test_resources / "dataset_cells.h5ad"
    found = {}
    for task in TASKS:
        base = tmp_path_factory.mktemp(task)
        original = run_task(task, common, cells, base / "original")
        solution = ad.read_h5ad(original / "solution.h5ad")
        changed_common, changed_cells, before, after = changed_inputs(common, cells, solution, base / "inputs")
        found[task] = (original, run_task(task, changed_common, changed_cells, base / "changed"), before, after)
    return found


@pytest.mark.parametrize("task", TASKS)
def test_changing_a_test_condition_leaves_the_method_visible_files_identical(runs, task):
    original, changed, report_before, report_after = runs[task]
    for name in METHOD_VISIBLE:
        assert differences(original / name, changed / name) == [], (task, name)   # which element, if any
        # and byte for byte: the tasks write h5ad deterministically (same input, same bytes)
        assert (original / name).read_bytes() == (changed / name).read_bytes(), (task, name)
    # the change is real: the files scoring reads differ, and so does the loaders' card, which is therefore
    # kept out of what methods read (before issue 21 it was copied into train.h5ad and test.h5ad)
    solution = differences(original / "solution.h5ad", changed / "solution.h5ad")
    assert "X" in solution and "layers/replicate_1" in solution, solution
    assert differences(original / "solution_cells.h5ad", changed / "solution_cells.h5ad")
    assert report_before is not None and str(report_before) != str(report_after)
    for name in ("train.h5ad", "test.h5ad", "train_cells.h5ad"):
        with h5py.File(original / name, "r") as handle:
            assert "dataset_report" not in handle["uns"], name
            assert {k for k in handle["uns"] if k.startswith("dataset_")} >= {"dataset_id", "dataset_name"}


def test_a_target_genes_change_reaches_only_the_revealed_target_level(runs, test_resources, tmp_path):
    """The one deliberate reveal: the test file's obs['target_expression'] (the measured level of each
    target, which ridge_regulators and latent_additive set): changing the target genes too changes it and
    nothing else a method reads."""
    original = runs["unseen_perturbation"][0]
    solution = ad.read_h5ad(original / "solution.h5ad")
    common, cells, _, _ = changed_inputs(test_resources / "common_dataset.h5ad", test_resources / "dataset_cells.h5ad",
                                         solution, tmp_path / "inputs", targets_too=True)
    changed = run_task("unseen_perturbation", common, cells, tmp_path / "changed")
    assert differences(original / "train.h5ad", changed / "train.h5ad") == []
    assert differences(original / "train_cells.h5ad", changed / "train_cells.h5ad") == []
    assert differences(original / "test.h5ad", changed / "test.h5ad") == ["obs/target_expression"]
    before = ad.read_h5ad(original / "test.h5ad").obs["target_expression"]
    after = ad.read_h5ad(changed / "test.h5ad").obs["target_expression"]
    assert (before != after).tolist() == [True] + [False] * (len(before) - 1)


def split_priors() -> list:
    """The prior components that learn from a split (src/api/comp_prior_from_training.yaml)."""
    from perturbcast.config import discover_components
    from perturbcast.engine import prior_learns_from_split

    return [c for c in discover_components(ROOT, errors=[]) if c.component_type == "prior" and prior_learns_from_split(c)]


def test_there_is_a_prior_learnt_from_a_split():
    assert "coexpression_network" in {c.name for c in split_priors()}


@pytest.mark.parametrize("prior", [c.name for c in split_priors()])
def test_a_prior_learnt_from_a_split_sees_no_test_condition(runs, prior, tmp_path):
    """A prior learnt from the benchmarked data is made from what a method reads and nothing else (the planner
    gives it train, test and training cells and refuses a prior declaring the dataset or solution files): so
    after a test condition's expression changed, the prior is identical, byte for byte, to the one before."""
    from perturbcast import engine

    component = next(c for c in split_priors() if c.name == prior)
    assert not {a.plain_name for a in component.arguments} & engine.SCORING_FILES
    original, changed, _, _ = runs["unseen_perturbation"]
    made = {}
    for name, folder in (("original", original), ("changed", changed)):
        inputs = {"input_train": folder / "train.h5ad", "input_test": folder / "test.h5ad", "output": tmp_path / f"{name}.h5ad"}
        if component.argument("input_train_cells"):
            inputs["input_train_cells"] = folder / "train_cells.h5ad"
        code, err = run(f"src/priors/{prior}", inputs, tmp_path / f"{name}.log")
        assert code == 0, err
        made[name] = tmp_path / f"{name}.h5ad"
    assert differences(made["original"], made["changed"]) == []
    assert made["original"].read_bytes() == made["changed"].read_bytes()
    # and the run on the changed split is not an empty answer: it holds a network
    with h5py.File(made["original"], "r") as handle:
        assert "network" in handle["varp"] and handle["varp"]["network"]["data"].shape[0] > 0


def test_the_planner_gives_a_split_prior_only_what_a_method_reads(tmp_path):
    from perturbcast import engine

    steps, _ = engine.plan(ROOT, tmp_path, engine.Selection(datasets=["simulated_grn_small"], methods=["ridge_regulators"],
                                                            metrics=["delta_error"], priors=["coexpression_network"],
                                                            n_folds=2))
    priors = [s for s in steps if s.stage == "prior"]
    assert priors and all(set(s.inputs) <= engine.METHOD_VISIBLE for s in priors)
    assert all({Path(p).name for p in s.inputs.values()} <= {"train.h5ad", "test.h5ad", "train_cells.h5ad"} for s in priors)
    # a prior learnt from a split that declares the solution is refused before anything runs
    component = next(c for c in split_priors() if c.name == "coexpression_network")
    import copy
    from perturbcast.config import Argument
    leaky = copy.copy(component)
    leaky.arguments = [*component.arguments, Argument(name="--input_solution", type="file")]
    with pytest.raises(ValueError, match="may read only"):
        engine.check_priors([leaky])
