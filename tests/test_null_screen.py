"""A screen without any effect ranks nothing (issue: a verdict only where the data can give one).

`simulated_grn --effect_scale 0` simulates a screen in which no perturbation changes any gene, with controls
that pool more cells than each perturbation (as real screens do), so any bias of a profile that depends on how
many cells it pools would show up as a fake effect; `simulated_null_shallow` is the same at 60 counts per cell
with 60 control cells per cell type against 80 per perturbation. On both, the whole benchmark (every fold of
unseen_perturbation, the baselines, the linear model and the panel's metrics) must find no signal: no
method's delta correlation beyond noise, no calibrated score (the ceiling does not beat train_mean), every
slice "not ranked" with its reason, no headline and no win or loss.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbcast.cli import main
from perturbcast.panel import HEADLINE_PANEL

from conftest import ROOT

PANEL_COMPONENTS = ["delta_error", "delta_correlation", "de_agreement", "discrimination", "systema"]
METHODS = ["linear_baseline", "additive", "knn_perturbation"]


@pytest.fixture(scope="module", params=["simulated_null", "simulated_null_shallow"])
def null_run(request, tmp_path_factory):
    output = tmp_path_factory.mktemp(request.param)
    code = main(["benchmark", "--project", str(ROOT), "--output", str(output), "--datasets", request.param,
                 "--tasks", "unseen_perturbation", "--methods", *METHODS, "--metrics", *PANEL_COMPONENTS,
                 "--jobs", "2"])
    assert code in (0, 1), code  # 1: a step failed (reported by the assertions below)
    return output


def test_every_step_ran(null_run):
    trace = pd.read_csv(null_run / "trace.tsv", sep="\t")
    assert not (trace.status == "failed").any(), trace[trace.status == "failed"].to_string()


def test_no_delta_correlation_beyond_noise(null_run):
    """With independent control estimates and per-cell normalisation no prediction correlates with the
    observed deltas beyond noise. The noise here is the draw of the control cells: every condition of a
    context shares its two control parts, so the mean over conditions keeps their realisation, of the
    order of a correlation between two unrelated vectors of n_genes values (1 / sqrt(n_genes)), which the
    bootstrap over conditions cannot see; the bound is twice that. ground_truth is left out: it predicts
    the observation itself, whose noise its delta shares by construction."""
    results = pd.read_parquet(null_run / "results.parquet")
    rows = results[(results.stratum == "all") & (results.metric_id == "pearson_delta")
                   & (results.method_id != "ground_truth")]
    assert len(rows) >= 6
    n_genes = len(_solution(null_run).var_names)
    for row in rows.itertuples():
        assert abs(row.value) < 2 / np.sqrt(n_genes), (row.method_id, row.value)


def test_a_shared_control_would_have_made_a_correlation(null_run):
    """The same train_mean prediction scored with the observed deltas taken against the training control it
    was made with (the design before independent controls): their common noise gives a clear correlation,
    which the reference part removes."""
    import anndata as ad

    shared, independent = [], []
    for solution_path in sorted((null_run / "tasks").glob("*/unseen_perturbation/seed_0/fold_*/solution.h5ad")):
        solution = ad.read_h5ad(solution_path)
        prediction = ad.read_h5ad(_prediction_of(null_run, solution_path, "train_mean"))
        X, guess = np.asarray(solution.X, np.float64), np.asarray(prediction.X, np.float64)
        control = np.asarray(solution.layers["control"], np.float64)
        reference = np.asarray(solution.layers["control_reference"], np.float64)
        for k in range(solution.n_obs):
            predicted = guess[k] - control[k]
            shared.append(np.corrcoef(predicted, X[k] - control[k])[0, 1])
            independent.append(np.corrcoef(predicted, X[k] - reference[k])[0, 1])
    bound = 2 / np.sqrt(solution.n_vars)
    assert np.mean(shared) > 2 * bound, np.mean(shared)
    assert abs(np.mean(independent)) < bound, np.mean(independent)


def _solution(run):
    import anndata as ad

    return ad.read_h5ad(next((run / "tasks").glob("*/unseen_perturbation/seed_0/fold_0/solution.h5ad")))


def _prediction_of(run, solution_path, method: str):
    fold = solution_path.parent.relative_to(run / "tasks")
    return run / "predictions" / fold / method / "prediction.h5ad"


def test_no_calibrated_score_and_nothing_ranked(null_run):
    results = pd.read_parquet(null_run / "results.parquet")
    panel = results[(results.stratum == "all") & results.metric_id.isin(HEADLINE_PANEL)]
    assert panel["score"].isna().all(), panel[panel.score.notna()][["method_id", "metric_id", "score"]]
    assert not results["outcome"].isin(["win", "loss"]).any()
    headline = pd.read_parquet(null_run / "headline.parquet")
    assert len(headline) and not headline["ranked"].any()
    assert headline["headline"].isna().all() and (headline["n_panel_metrics"] == 0).all()
    # the loader's split-half test found no reproducible effect, or (by chance) a few: either way a reason
    reasons = headline["not_ranked_reason"]
    assert (reasons.str.startswith("no reproducible effect") | reasons.str.startswith(
        "too few calibrated panel metrics (0 of 5")).all(), reasons.unique()
    summary = pd.read_parquet(null_run / "summary.parquet")
    assert summary["calibrated"].isna().all()
    assert (summary[["wins", "losses"]] == 0).all().all()


def test_the_ceiling_is_the_training_mean(null_run):
    """No condition departs from the training mean beyond noise, so every draw of the ceiling is it."""
    results = pd.read_parquet(null_run / "results.parquet")
    overall = results[(results.stratum == "all")].set_index(["method_id", "metric_id"])["value"]
    for metric in HEADLINE_PANEL:
        assert overall["replicate_ceiling", metric] == pytest.approx(overall["train_mean", metric], abs=1e-9)


def test_ground_truth_error_is_zero_and_its_correlation_is_not_one(null_run):
    """Errors compare profiles directly (a common control cancels), so ground_truth's are 0; its delta
    correlation takes the two independent control parts, so it is below 1 by exactly their difference."""
    results = pd.read_parquet(null_run / "results.parquet")
    overall = results[results.stratum == "all"].set_index(["method_id", "metric_id"])["value"]
    assert overall["ground_truth", "mse_delta"] == pytest.approx(0.0, abs=1e-12)
    assert overall["ground_truth", "pearson_delta"] < 0.99
