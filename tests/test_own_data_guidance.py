"""Own data, guided (issue 23, friction 2): the h5ad_file loader names an obs column that splits the control cells
into groups differing more than replicate halves do, and the `--dataset-arg` that would use it; the dataset card
says which column each role came from."""
from __future__ import annotations

import importlib.util
import sys

import anndata as ad
import numpy as np
import scipy.sparse as sp

from perturbcast.runner import run_component
from perturbcast.userdata import dataset_step_arguments, parse_dataset_args

from conftest import ROOT
from test_userdata import loader_argv, screen

LOADER = ROOT / "src" / "datasets" / "h5ad_file"


def _module():
    if str(ROOT / "src" / "utils") not in sys.path:
        sys.path.append(str(ROOT / "src" / "utils"))
    spec = importlib.util.spec_from_file_location("guidance_hidden_conditions",
                                                  ROOT / "src" / "utils" / "hidden_conditions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stimulated(seed=0) -> ad.AnnData:
    """test_userdata's screen twice, once stimulated: 10 genes 4x higher in every stimulated cell (controls too),
    recorded only in obs['perturbation_2']; obs['lane'] is a random 2-level column with no effect."""
    rest, stim = screen(seed=seed), screen(seed=seed + 1)
    counts = stim.X.toarray()
    counts[:, 30:40] = np.random.default_rng(seed + 2).poisson(counts[:, 30:40] * 4 + 1)
    stim = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=stim.obs.copy(), var=stim.var.copy())
    rest.obs["perturbation_2"], stim.obs["perturbation_2"] = "unstimulated", "stimulated"
    both = ad.concat([rest, stim], index_unique="-")
    both.obs["lane"] = np.random.default_rng(seed + 3).choice(["L1", "L2"], size=both.n_obs)
    return both


def dense_sums(X: np.ndarray):
    return lambda codes, n: np.vstack([X[codes == k].sum(axis=0) for k in range(n)])


def test_a_stimulation_column_splits_the_controls_and_a_random_one_does_not():
    hidden = _module()
    data = stimulated()
    controls = (data.obs["target_gene"] == "non-targeting").to_numpy()
    found = hidden.hidden_condition_columns(data.obs, controls, ["target_gene", "perturbation_type"],
                                            dense_sums(data.X.toarray()), counts=True)
    assert [f["column"] for f in found] == ["perturbation_2"]
    assert found[0]["ratio"] > 10
    assert found[0]["line"].endswith("rerun with --dataset-arg condition_column=perturbation_2")
    assert "(stimulated 40, unstimulated 40)" in found[0]["line"]
    # the random lane is measured (a candidate) but differs like halves do
    candidates = [c for c, _ in hidden.candidate_columns(data.obs, controls, ["target_gene", "perturbation_type"])]
    assert "lane" in candidates


def test_split_ratio_of_hand_made_halves():
    hidden = _module()
    # two groups, each with halves 1 apart on one gene; the groups 3 apart: between 9, within 1
    halves = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    assert hidden.split_ratio(halves) == 9.0


def test_loader_names_the_column_and_the_card_says_which_columns_it_used(tmp_path):
    path = tmp_path / "pooled.h5ad"
    stimulated().write_h5ad(path)
    loader, _, arguments = dataset_step_arguments(path, "pooled",
                                                  parse_dataset_args(["perturbation_column=target_gene"]))
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        result = run_component(LOADER, loader_argv(arguments, tmp_path / "d.h5ad"), stdout=handle, stderr=handle)
    assert result.exit_code == 0
    hints = [line for line in log.read_text().splitlines() if "[hint]" in line]
    assert len(hints) == 1 and "obs['perturbation_2']" in hints[0]
    assert hints[0].endswith("--dataset-arg condition_column=perturbation_2")
    report = ad.read_h5ad(tmp_path / "d.h5ad").uns["dataset_report"]
    assert report["columns_used"]["perturbation"] == "obs['target_gene'] (--perturbation_column)"
    assert report["columns_used"]["condition"].startswith("none: every cell in one condition")
    assert "obs['perturbation_2'] splits the control cells" in report["columns_used"]["condition"]
    assert report["columns_used"]["replicate"] == "none: seeded random halves of each condition's cells"

    _, _, named = dataset_step_arguments(path, "pooled", parse_dataset_args(
        ["perturbation_column=target_gene", "condition_column=perturbation_2"]))
    with open(log, "w") as handle:
        assert run_component(LOADER, loader_argv(named, tmp_path / "e.h5ad"), stdout=handle,
                             stderr=handle).exit_code == 0
    assert "[hint]" not in log.read_text()
    report = ad.read_h5ad(tmp_path / "e.h5ad").uns["dataset_report"]
    assert report["columns_used"]["condition"] == "obs['perturbation_2'] (--condition_column)"
