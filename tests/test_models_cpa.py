"""The CPA component (src/methods/cpa) through the runner, in its own environment (perturbcast/envs.py builds
it from the config's docker setup on first use and caches it), on Norman cells of the PerturBench devel
file, a few tiny epochs. Where the environment cannot be built (e.g. no package index reachable) the
component ends with exit 98 and these tests skip with its line."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from test_methods_models import assert_one_line_stop, run
from model_envs import skip_unless_environment
from test_models_cells import make_split

TINY = {"max_epochs": 3, "max_cells_per_condition": 40, "n_query_cells": 30, "n_latent": 8, "batch_size": 128}


def run_cpa(split: Path, output: Path, **extra):
    skip_unless_environment("cpa")
    args = {"input_train": split / "train.h5ad", "input_test": split / "test.h5ad",
            "input_train_cells": split / "train_cells.h5ad", **extra, "output": output}
    code, err = run("src/methods/cpa", args, output.with_suffix(".log"), cpus=2)
    if code == 98:
        pytest.skip(next(line for line in err.splitlines() if line.startswith("[not installed]")))
    return code, err


@pytest.fixture(scope="module")
def norman(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cpa")
    split = make_split(directory / "split", "norman19", "unseen_combination")
    output = directory / "prediction.h5ad"
    code, err = run_cpa(split, output, output_cells=directory / "cells.h5ad", **TINY)
    assert code == 0, err
    return split, output, directory / "cells.h5ad", err


def test_cpa_writes_cells_for_every_held_out_condition_and_their_mean(norman):
    split, output, cells_path, err = norman
    test = ad.read_h5ad(split / "test.h5ad")
    prediction, cells = ad.read_h5ad(output), ad.read_h5ad(cells_path)
    assert list(prediction.obs_names) == list(test.obs_names)
    assert list(cells.var_names) == list(prediction.var_names)
    counts = cells.obs["condition_id"].value_counts()
    assert set(counts.index) == set(test.obs_names) and (counts == TINY["n_query_cells"]).all()
    X = np.asarray(prediction.X)
    assert np.isfinite(X).all() and np.isfinite(np.asarray(cells.X)).all()
    for row, name in enumerate(test.obs_names):
        mean = np.asarray(cells.X[(cells.obs["condition_id"] == name).to_numpy()].mean(axis=0)).ravel()
        np.testing.assert_allclose(X[row], mean, rtol=1e-4, atol=1e-5)
    # Norman's combo_seen0 pairs (neither gene perturbed in training) are counted, not hidden
    n_unseen = sum(s != "combo_seen2" for s in test.obs["stratum"])
    assert prediction.uns["n_with_unseen_target"] == n_unseen
    assert "never perturbed in training" in err or n_unseen == 0


def test_cpa_is_not_applicable_to_unseen_perturbations(tmp_path):
    """No test target perturbed in the training cells (Norman's unseen_perturbation split, with the pairs that
    contain a held-out gene also removed from the cells): exit 99, one line, no output."""
    split = make_split(tmp_path / "split", "norman19", "unseen_perturbation")
    test = ad.read_h5ad(split / "test.h5ad")
    held_out = {t for p in test.obs["perturbation"] for t in p.split("+")}
    cells = ad.read_h5ad(split / "train_cells.h5ad")
    keep = [p == "control" or not set(p.split("+")) & held_out for p in cells.obs["perturbation"]]
    cells[np.array(keep)].copy().write_h5ad(split / "train_cells.h5ad")
    output = tmp_path / "prediction.h5ad"
    code, err = run_cpa(split, output, **TINY)
    assert_one_line_stop(code, err, output, 99, "none of the", "unseen perturbations")


def test_cpa_without_its_environment_is_not_installed_98(norman, tmp_path, monkeypatch):
    """PERTURBCAST_ISOLATED_ENVIRONMENTS=0 runs it with the test's own Python, which lacks cpa-tools."""
    pytest.importorskip("anndata")
    try:
        import cpa  # noqa: F401
        pytest.skip("cpa-tools is importable here")
    except ImportError:
        pass
    monkeypatch.setenv("PERTURBCAST_ISOLATED_ENVIRONMENTS", "0")
    split = norman[0]
    output = tmp_path / "prediction.h5ad"
    args = {"input_train": split / "train.h5ad", "input_test": split / "test.h5ad",
            "input_train_cells": split / "train_cells.h5ad", "output": output}
    code, err = run("src/methods/cpa", args, tmp_path / "cpa.log")
    assert code == 98, err
    lines = [line for line in err.splitlines() if line.startswith("[not installed]")]
    assert len(lines) == 1 and "cpa" in lines[0] and not output.exists()
