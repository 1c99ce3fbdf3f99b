"""The GEARS component (src/methods/gears) through the runner, on Norman cells of the PerturBench devel
file with the real human GO annotation (../shared/data), one tiny epoch.

GEARS runs in the project's environment when the `gears` extra is installed (CI installs `.[test]`,
which includes it); where it is not, the component ends with exit 98 and these tests skip with its line.
"""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from conftest import shared_file
from test_methods_models import UNS, assert_one_line_stop, run, write_test, write_train
from test_models_cells import make_split

GO = "human_gene2go_orgHsEgDb_3.16.0.tsv.gz"
TINY = {"epochs": 1, "max_cells_per_condition": 20, "hidden_size": 16, "batch_size": 64}


def run_gears(split: Path, output: Path, **extra):
    args = {"input_train": split / "train.h5ad", "input_test": split / "test.h5ad",
            "input_train_cells": split / "train_cells.h5ad", **extra, "output": output}
    code, err = run("src/methods/gears", args, output.with_suffix(".log"), cpus=2)
    if code == 98:
        pytest.skip(next(line for line in err.splitlines() if line.startswith("[not installed]")))
    return code, err


@pytest.fixture(scope="module")
def norman(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gears")
    split = make_split(directory / "split", "norman19", "unseen_combination")
    output = directory / "prediction.h5ad"
    code, err = run_gears(split, output, go_annotation=shared_file(GO), output_cells=directory / "cells.h5ad", **TINY)
    assert code == 0, err
    return split, output, err


def test_gears_writes_the_cells_its_profiles_are_made_from(norman):
    """--output_cells: per test condition the cells GEARS predicted (from its sampled control cells); the profile
    prediction is their mean (Norman devel profiles are cell means), up to the clipping at 0."""
    split, output, err = norman
    prediction = ad.read_h5ad(output)
    cells = ad.read_h5ad(output.parent / "cells.h5ad")
    assert list(cells.var_names) == list(prediction.var_names)
    assert set(cells.obs["condition_id"]) == set(prediction.obs_names)
    assert cells.uns["method_id"] == "gears" and (np.asarray(cells.X) >= 0).all()
    for name, row in zip(prediction.obs_names, np.asarray(prediction.X)):
        mine = np.asarray(cells.X[(cells.obs["condition_id"] == name).to_numpy()])
        assert len(mine) >= 20
        assert np.corrcoef(mine.mean(axis=0), row)[0, 1] > 0.99
        # equal but where clipping each cell at 0 (not only their mean) raised a gene's mean
        gap = mine.mean(axis=0) - row
        assert gap.min() > -1e-4 and np.mean(np.abs(gap) < 1e-4) > 0.9


def test_gears_predicts_every_held_out_pair_from_its_go_graph(norman):
    split, output, err = norman
    test = ad.read_h5ad(split / "test.h5ad")
    prediction = ad.read_h5ad(output)
    assert list(prediction.obs_names) == list(test.obs_names)
    X = np.asarray(prediction.X)
    assert np.isfinite(X).all()
    # every Norman target has GO terms: every pair goes through GEARS, none falls back to the controls
    assert prediction.uns["n_without_go"] == 0, err
    cells = ad.read_h5ad(split / "train_cells.h5ad")
    control = np.asarray(cells.X[cells.obs["is_control"].to_numpy()].mean(axis=0)).ravel()
    for row in X:
        assert np.abs(row - control).max() > 1e-3  # the network changed the control profile
    assert len({tuple(np.round(row, 5)) for row in X}) == len(X)  # one prediction per pair


def test_gears_reads_a_go_table_and_says_so(norman):
    assert "GO map from" in norman[2] and GO in norman[2]


def test_gears_bad_go_table_is_one_line(norman, tmp_path):
    split = norman[0]
    table = tmp_path / "go.tsv"
    table.write_text("gene\tterm\nKLF1\tGO:0000001\n")
    output = tmp_path / "prediction.h5ad"
    code, err = run_gears(split, output, go_annotation=table, **TINY)
    assert_one_line_stop(code, err, output, 1, "--go_annotation", "symbol")


def test_gears_is_not_applicable_to_genes_without_go_terms(tmp_path):
    """Simulated `G0001` genes have no GO annotation: not applicable (exit 99), no output."""
    genes = [f"G{i:04d}" for i in range(1, 13)]
    rng = np.random.default_rng(0)
    perturbations = ["control"] * 2 + ["G0001"] * 2 + ["G0002"] * 2 + ["G0003"] * 2
    write_train(tmp_path / "train.h5ad", genes, perturbations, rng.random((len(perturbations), len(genes))))
    write_test(tmp_path / "test.h5ad", genes, [("G0004", "0.5")])
    labels = ["control"] * 30 + ["G0001"] * 10 + ["G0002"] * 10 + ["G0003"] * 10
    cells = ad.AnnData(X=rng.random((len(labels), len(genes))).astype(np.float32))
    cells.obs_names = [f"c{i}" for i in range(len(labels))]
    cells.var_names = genes
    cells.obs["perturbation"] = labels
    cells.obs["is_control"] = [p == "control" for p in labels]
    cells.obs["cell_type"], cells.obs["condition"] = "K562", "none"
    cells.uns.update(UNS)
    cells.write_h5ad(tmp_path / "train_cells.h5ad")
    output = tmp_path / "prediction.h5ad"
    code, err = run_gears(tmp_path, output, go_annotation=shared_file(GO), **TINY)
    assert_one_line_stop(code, err, output, 99, "GO annotation")
