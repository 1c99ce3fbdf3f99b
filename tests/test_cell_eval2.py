"""src/metrics/cell_eval2 (the VCC 2026 reference scorer, in its own environment) and the agreement of
perturbcast's metric functions with cell-eval2's where the definitions coincide.

The tests that run cell-eval2 need its environment (`perturbcast envs build cell_eval2`, which CI runs;
or PERTURBCAST_TEST_MODEL_ENVS=1 to build it here); the rest run anywhere."""
from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from model_envs import skip_unless_environment
from perturbcast import envs
from perturbcast.layout import NOT_INSTALLED_EXIT_CODE
from perturbcast.runner import run_component

sys.path.insert(0, str(ROOT / "src" / "utils"))
import deltas  # noqa: E402
import metric_utils as mu  # noqa: E402

COMPONENT = ROOT / "src" / "metrics" / "cell_eval2"
RAW = yaml.safe_load((COMPONENT / "config.vsh.yaml").read_text())
RESOURCES = ROOT / "resources_test" / "simulated_grn" / "unseen_perturbation"
VCC2026 = ["pds_cosine", "expr_mse_unbiased_capped_norm", "de_wilcoxon_lfc_nmae",
           "de_wilcoxon_direction_fidelity_yield_raw", "de_wilcoxon_direction_reach_raw", "de_wilcoxon_sig_jaccard"]


def environment_python() -> str:
    skip_unless_environment("cell_eval2", RAW)
    return str(envs.ensure("cell_eval2", RAW).python)


def resources():
    if not (RESOURCES / "solution_cells.h5ad").exists():
        pytest.skip("resources_test/ is missing: scripts/create_test_resources.py makes it")
    return RESOURCES


def run(tmp_path, **files):
    output = tmp_path / "score.h5ad"
    args = [x for key, value in files.items() for x in (f"--{key}", str(value))]
    result = run_component(COMPONENT, [*args, "--output", str(output)])
    return result, (ad.read_h5ad(output) if output.exists() else None)


def profile_inputs(folder):
    return {"input_solution": folder / "solution.h5ad", "input_prediction": folder / "prediction.h5ad"}


def cell_inputs(folder):
    return {"input_prediction_cells": folder / "prediction_cells.h5ad",
            "input_solution_cells": folder / "solution_cells.h5ad", "input_train_cells": folder / "train_cells.h5ad"}


# --------------------------------------------------------------------------- anywhere (no environment)

def test_declares_the_vcc2026_members_with_their_directions():
    declared = {m["name"]: m["maximize"] for m in RAW["info"]["metrics"]}
    assert declared == {"cell_eval2_pds_cosine": True, "cell_eval2_expr_mse_unbiased_capped_norm": False,
                        "cell_eval2_de_wilcoxon_lfc_nmae": False,
                        "cell_eval2_de_wilcoxon_direction_fidelity_yield_raw": True,
                        "cell_eval2_de_wilcoxon_direction_reach_raw": True,
                        "cell_eval2_de_wilcoxon_sig_jaccard": True}
    assert RAW["info"]["isolated_environment"] is True and RAW["info"]["requires_python"] == "3.11"


def test_an_older_python_is_not_installed_not_failed(tmp_path, monkeypatch, capfd):
    """The environment is made from the running interpreter: one older than `requires_python` cannot
    build it, so the component is "not installed" (exit 98) and `envs build` skips it (exit 0)."""
    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))
    assert envs.python_too_old(RAW) == f"needs Python >= 3.11; this interpreter is {sys.version.split()[0]}"
    with pytest.raises(envs.EnvironmentError_, match="needs Python >= 3.11"):
        envs.ensure("cell_eval2", RAW)
    folder = resources()
    result, score = run(tmp_path, **profile_inputs(folder), **cell_inputs(folder))
    assert result.exit_code == NOT_INSTALLED_EXIT_CODE and score is None
    assert "[not installed] cell_eval2: environment not built: needs Python >= 3.11" in capfd.readouterr().err
    from perturbcast import envs_cli
    from perturbcast.config import load_config

    assert envs_cli._build(load_config(COMPONENT / "config.vsh.yaml")) is True
    assert "cell_eval2: skipped: needs Python >= 3.11" in capfd.readouterr().err


def test_without_requires_python_or_with_an_old_one_any_python_builds():
    assert envs.python_too_old({"info": {}}) is None
    assert envs.python_too_old({"info": {"requires_python": "3.8"}}) is None


# ------------------------------------------------------------------------ with cell-eval2's environment

def test_scores_the_test_resources_with_the_vcc2026_members(tmp_path, capfd):
    """Three conditions per context: pds_cosine = 1 - rank / (n - 1) with n = 3 and mid-ranks for ties, so
    every value is a multiple of 1/4 in [0, 1]."""
    environment_python()
    folder = resources()
    result, score = run(tmp_path, **profile_inputs(folder), **cell_inputs(folder))
    assert result.exit_code == 0, capfd.readouterr().err
    ids = ["cell_eval2_" + m for m in VCC2026]
    assert list(score.uns["metric_ids"]) == ids
    assert list(score.obs_names) == list(ad.read_h5ad(folder / "solution.h5ad").obs_names)
    values = score.obs[ids].to_numpy()
    assert np.isfinite(values).all()
    pds = score.obs["cell_eval2_pds_cosine"].to_numpy()
    assert np.allclose(pds * 4, np.round(pds * 4), atol=1e-12) and ((pds >= 0) & (pds <= 1)).all()
    assert np.allclose(score.uns["metric_values"], values.mean(axis=0))
    for member in ("de_wilcoxon_direction_fidelity_yield_raw", "de_wilcoxon_direction_reach_raw",
                   "de_wilcoxon_sig_jaccard"):
        assert ((values[:, ids.index("cell_eval2_" + member)] >= 0)
                & (values[:, ids.index("cell_eval2_" + member)] <= 1)).all()
    assert score.uns["cell_eval2_version"] == "0.20.0" and score.uns["cell_eval2_profile"] == "vcc2026"
    assert "negative predicted values" in capfd.readouterr().err  # train_mean's linear cells dip below 0


def test_without_predicted_cells_it_is_not_applicable(tmp_path, capfd):
    environment_python()
    folder = resources()
    cells = cell_inputs(folder)
    del cells["input_prediction_cells"]
    result, score = run(tmp_path, **profile_inputs(folder), **cells)
    assert result.exit_code == 99 and score is None
    assert "[not applicable] the prediction has no cells" in capfd.readouterr().err


def test_cells_of_unknown_conditions_are_one_error_line(tmp_path, capfd):
    environment_python()
    folder = resources()
    cells = ad.read_h5ad(folder / "prediction_cells.h5ad")
    cells.obs["condition_id"] = cells.obs["condition_id"].astype(str).str.replace("G0001", "G9999")
    cells.write_h5ad(tmp_path / "prediction_cells.h5ad")
    files = {**cell_inputs(folder), "input_prediction_cells": tmp_path / "prediction_cells.h5ad"}
    result, score = run(tmp_path, **profile_inputs(folder), **files)
    assert result.exit_code == 1 and score is None
    err = capfd.readouterr().err
    assert "obs['condition_id'] holds 2 values that are no test condition" in err and "Traceback" not in err


# ------------------------------------------------------------------- parity on the same profiles (Norman)

CELL_EVAL2_ON_PROFILES = """
import json, sys, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from dataclasses import replace
import anndata as ad
from cell_eval2 import EvalConfig, compute_metrics
folder, gene_map = sys.argv[1], json.loads(sys.argv[2])
config = replace(EvalConfig.from_preset("v2"), metrics=["delta_pearson", "delta_mse", "delta_mae", "expr_mse",
                 "expr_mae", "pds_l1", "pds_cosine"], pert_col="label", control="non-targeting",
                 input_type="lognorm", num_threads=1, device="cpu", target_gene_map=gene_map)
frame = compute_metrics(ad.read_h5ad(folder + "/pred.h5ad"), ad.read_h5ad(folder + "/real.h5ad"), config=config)
frame.to_pandas().to_csv(folder + "/cell_eval2.csv", index=False)
"""


@pytest.fixture(scope="module")
def norman_profiles(tmp_path_factory):
    """Norman 2019 (PerturBench devel subset), fold 0 of 2 of unseen_perturbation: the solution's profiles
    and a noisy half-effect prediction, given to cell-eval2 as one "cell" per condition (log-normalised)
    plus the control profile as its control group."""
    import partitions
    import splits
    from realdata import norman19_common  # skips when ../shared/data is absent

    python = environment_python()
    folder = tmp_path_factory.mktemp("cell_eval2_parity")
    common = norman19_common()
    is_test, stratum, exclude, _ = partitions.perturbation_fold(common.obs, 2, 0, 0)
    _, _, solution = splits.build_split(common, is_test, stratum, "unseen_perturbation", 0, exclude=exclude,
                                        n_folds=2, fold=0)
    control = solution.layers["control"].astype(np.float32).astype(np.float64)
    truth = np.asarray(solution.X, dtype=np.float32).astype(np.float64)
    rng = np.random.default_rng(0)
    guess = np.clip(control + 0.5 * (truth - control) + rng.normal(0, 0.05, size=truth.shape), 0, None)
    guess = guess.astype(np.float32).astype(np.float64)
    labels = solution.obs_names.astype(str).tolist()
    genes = solution.var_names.astype(str)
    for name, matrix in (("real", truth), ("pred", guess)):
        X = np.vstack([control[:1], matrix]).astype(np.float32)
        obs = pd.DataFrame({"label": ["non-targeting", *labels]}, index=[f"r{i}" for i in range(len(X))])
        ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=object))).write_h5ad(folder / f"{name}.h5ad")
    # cell-eval2's target map takes one gene per label: a condition's first measured target, if any
    targets = [str(p).split("+") for p in solution.obs["perturbation"]]
    gene_map = {label: next((t for t in ts if t in set(genes)), None) for label, ts in zip(labels, targets)}
    import json

    subprocess.run([python, "-c", CELL_EVAL2_ON_PROFILES, str(folder), json.dumps(gene_map)], check=True,
                   capture_output=True, text=True)
    theirs = pd.read_csv(folder / "cell_eval2.csv").pivot_table(index="perturbation", columns="metric",
                                                                 values="value").loc[labels]
    return {"solution": solution, "control": control, "truth": truth, "guess": guess, "genes": genes,
            "targets": targets, "gene_map": gene_map, "theirs": theirs}


def test_agreement_with_cell_eval2_where_the_definitions_coincide(norman_profiles):
    """perturbcast's functions with cell-eval2's conventions (delta and expression errors over every gene;
    discrimination over the genes that are no label's mapped target, rank denominator n - 1) give
    cell-eval2's numbers to 1e-6."""
    p = norman_profiles
    theirs = p["theirs"]
    observed, predicted = p["truth"] - p["control"], p["guess"] - p["control"]
    everything = np.ones(observed.shape, dtype=bool)
    errors = deltas.masked_errors(predicted, observed, everything)
    expression = deltas.masked_errors(p["guess"], p["truth"], everything)
    pearson, undefined = deltas.masked_rowwise_pearson(predicted, observed, everything)
    mapped = np.isin(p["genes"], [g for g in p["gene_map"].values() if g is not None])
    n = len(observed)
    ours = {"delta_pearson": pearson, "delta_mse": errors["mse"], "delta_mae": errors["mae"],
            "expr_mse": expression["mse"], "expr_mae": expression["mae"]}
    for kind in ("l1", "cosine"):
        distances = mu.pairwise_distances(predicted[:, ~mapped], observed[:, ~mapped], metric=kind)
        ours[f"pds_{kind}"] = 1 - mu.diagonal_ranks(distances) / (n - 1)
    assert not undefined.any() and mapped.any() and n >= 10
    for metric, values in ours.items():
        np.testing.assert_allclose(values, theirs[metric].to_numpy(), atol=1e-6, rtol=0, err_msg=metric)


def test_convention_differences_are_the_documented_ones(norman_profiles, capsys):
    """perturbcast's own ids differ from cell-eval2's counterparts by convention only: every target of the
    row left out (pearson_delta, mse_delta), every target of the context left out and denominator N
    (discrimination_l1). The differences printed here are the ones docs/metrics.md quotes."""
    p = norman_profiles
    theirs = p["theirs"]
    observed, predicted = p["truth"] - p["control"], p["guess"] - p["control"]
    keep = ~deltas.target_mask([str(x) for x in p["solution"].obs["perturbation"]], p["genes"])
    pearson, _ = deltas.masked_rowwise_pearson(predicted, observed, keep)
    errors = deltas.masked_errors(predicted, observed, keep)
    context = mu.context_genes(keep, np.arange(len(observed)))
    distances = mu.pairwise_distances(predicted[:, context], observed[:, context], metric="l1")
    ours = {"pearson_delta": (pearson, "delta_pearson"), "mse_delta": (errors["mse"], "delta_mse"),
            "discrimination_l1": (1 - mu.diagonal_ranks(distances) / len(observed), "pds_l1")}
    lines = []
    for metric_id, (values, theirs_id) in ours.items():
        difference = values - theirs[theirs_id].to_numpy()
        lines.append(f"{metric_id} vs {theirs_id}: mean {values.mean():.6f} vs {theirs[theirs_id].mean():.6f}, "
                     f"max |diff| per condition {np.abs(difference).max():.2e}")
        assert np.isfinite(difference).all()
    n = len(observed)
    with capsys.disabled():
        print(f"\ncell-eval2 convention differences on {n} Norman 2019 conditions x {len(p['genes'])} genes:\n  "
              + "\n  ".join(lines))


def test_undefined_direction_members_follow_cell_eval2s_agreement_convention():
    """Where neither side calls a gene, fidelity_yield (k / max(n_pred, N_conf)) is undefined and scores 1, as
    cell-eval2's corrected form does; reach (k* / N_conf) without a reference gene scores 1 if the prediction
    called nothing too, else 0; a defined value is kept, other members keep NaN for the component's fill."""
    import pandas as pd

    sys.path.insert(0, str(ROOT / "src" / "utils"))
    from cell_eval2_fill import FIDELITY_YIELD, REACH, agreement_fill

    nan = float("nan")
    table = pd.DataFrame({FIDELITY_YIELD: [0.5, nan, 0.0], REACH: [0.25, nan, nan], "pds_cosine": [0.9, nan, 0.1]},
                         index=["defined", "both silent", "prediction claims"])
    filled = agreement_fill(table)
    assert filled[FIDELITY_YIELD].tolist() == [0.5, 1.0, 0.0]
    assert filled[REACH].tolist() == [0.25, 1.0, 0.0]
    assert filled["pds_cosine"].isna().tolist() == [False, True, False]
    assert table[FIDELITY_YIELD].isna().sum() == 1  # the input (cell-eval2's own values) is unchanged
